from __future__ import annotations

import pytest

from wsi_stnuc.classes import IGNORE_CLASS, UNKNOWN, ClassTable, Taxonomy, load_taxonomy


def test_class_ids_reserve_background_and_ignore():
    table = ClassTable.from_names(["epithelial", "inflammatory", "connective"])
    assert table.n_classes == 3
    assert table.id_of("epithelial") == 1
    assert table.id_of("connective") == 3
    assert table.id_of(UNKNOWN) == IGNORE_CLASS
    assert table.ids_of(["connective", "nope", "epithelial"]) == [3, IGNORE_CLASS, 1]
    assert table.name_of(2) == "inflammatory"
    assert table.name_of(0) == UNKNOWN
    assert table.name_of(IGNORE_CLASS) == UNKNOWN


def test_class_table_rejects_unknown_and_duplicates():
    with pytest.raises(ValueError, match="abstain"):
        ClassTable.from_names(["a", UNKNOWN])
    with pytest.raises(ValueError, match="duplicate"):
        ClassTable.from_names(["a", "a"])


def test_taxonomy_yaml_round_trip(tmp_path):
    table = ClassTable.from_names(["lymphoid", "spindle"])
    tax = Taxonomy(
        table,
        {"T": "lymphoid", "B": "lymphoid", "Fibroblast": "spindle", "Mast": UNKNOWN},
        notes={"merges": [["T", "B"]]},
    )
    path = tmp_path / "tax.yaml"
    tax.to_yaml(path)
    back = Taxonomy.from_yaml(path)
    assert back.classes == table
    assert back.mapping == tax.mapping
    assert back.notes == tax.notes
    assert back.map_types(["T", "Fibroblast", "Mast", "never-seen"]) == [
        "lymphoid",
        "spindle",
        UNKNOWN,
        UNKNOWN,
    ]


def test_taxonomy_rejects_classes_missing_from_table():
    with pytest.raises(ValueError, match="not in its class table"):
        Taxonomy(ClassTable.from_names(["a"]), {"T": "b"})


def test_invalid_taxonomy_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("classes: [1, 2]\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        Taxonomy.from_yaml(path)


def test_default_taxonomy_maps_the_breast_types():
    tax = load_taxonomy()
    assert tax.classes.names == ("epithelial", "inflammatory", "connective")
    expert = [
        "T",
        "Macrophage",
        "Malignant",
        "Fibroblast",
        "Epithelial",
        "Endothelial",
        "Myeloid",
        "B",
        "Plasma",
    ]
    assert UNKNOWN not in tax.map_types(expert)

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wsi_stnuc.classes import UNKNOWN, Taxonomy
from wsi_stnuc.errors import InputError
from wsi_stnuc.taxonomy.learn import (
    f1_scores,
    learn_taxonomy,
    merge_counts,
    symmetric_confusion,
    write_learned_taxonomy,
)

NAMES = ["T", "B", "Fibro", "Endo", "Epi", "Odd"]


def _two_pairs_and_a_diffuse_type() -> pd.DataFrame:
    """T/B mutually confused, Fibro/Endo mutually confused, Epi clean, Odd confused with all."""
    m = np.array(
        [
            [45, 40, 2, 2, 3, 8],
            [40, 45, 2, 2, 3, 8],
            [2, 2, 45, 40, 3, 8],
            [2, 2, 40, 45, 3, 8],
            [2, 2, 2, 2, 85, 7],
            [17, 17, 17, 17, 16, 16],
        ]
    )
    return pd.DataFrame(m, index=NAMES, columns=NAMES)


def test_f1_and_merge_counts_by_hand():
    c = np.array([[8, 2], [1, 9]])
    assert np.allclose(f1_scores(c), [16 / 19, 18 / 21])
    merged = merge_counts(c, [[0, 1]])
    assert merged.tolist() == [[20.0]]
    s = symmetric_confusion(c)
    assert np.allclose(s, [[0, 0.2 + 0.1], [0.3, 0]])


def test_two_confused_pairs_merge_and_diffuse_type_goes_unknown():
    learned = learn_taxonomy(_two_pairs_and_a_diffuse_type(), min_f1=0.8)
    mapping = learned.taxonomy.mapping
    assert mapping["T"] == mapping["B"] != mapping["Fibro"] == mapping["Endo"]
    assert mapping["Epi"] not in (mapping["T"], mapping["Fibro"], UNKNOWN)
    assert mapping["Odd"] == UNKNOWN
    assert learned.taxonomy.classes.n_classes == 3
    # equal support: members are named in alphabetical order
    assert set(learned.taxonomy.classes.names) == {"B+T", "Endo+Fibro", "Epi"}
    actions = [m["action"] for m in learned.merges]
    assert actions == ["merge", "merge", "unknown"]
    assert all(learned.f1_after >= 0.8)
    assert learned.confusion_after.shape == (3, 3)
    # the merged counts are the sums of the member counts
    assert (
        learned.confusion_after.to_numpy().sum()
        == learned.confusion_before.iloc[:5, :5].to_numpy().sum()
    )


def test_n_classes_stops_merging_early():
    learned = learn_taxonomy(_two_pairs_and_a_diffuse_type(), n_classes=4)
    # T+B merge (5 recognised classes are too many); then the recognised classes number 4,
    # so Fibro and Endo (both recognised, F1 ~0.45) are not merged to make room for the
    # diffuse type, which abstains on its own
    assert learned.taxonomy.classes.n_classes == 4
    assert learned.taxonomy.mapping["Odd"] == UNKNOWN
    assert [m["action"] for m in learned.merges] == ["merge", "stop", "unknown"]
    assert learned.merges[0]["pair"] == ["T", "B"]
    assert set(learned.merges[1]["pair"]) == {"Fibro", "Endo"}


def test_a_class_that_will_abstain_does_not_force_a_merge(tmp_path):
    """Three image classes, each recognised, and a small type the image cannot place but
    confused with two of them (as ST-typed plasma cells on CoNSeP): with n_classes=3 the
    three stay apart and the small type abstains, instead of two good classes merging to
    make room for a class that is dropped afterwards."""
    names = ["epi", "spindle", "infl", "plasma"]
    m = pd.DataFrame(
        [[75, 20, 5, 0], [30, 55, 15, 0], [5, 10, 85, 0], [9, 8, 8, 0]],
        index=names,
        columns=names,
    )
    learned = learn_taxonomy(m, n_classes=3)
    assert learned.taxonomy.mapping == {
        "epi": "epi", "spindle": "spindle", "infl": "infl", "plasma": UNKNOWN,
    }  # fmt: skip
    assert [e["action"] for e in learned.merges] == ["stop", "unknown"]
    written = write_learned_taxonomy(learned, tmp_path / "t.yaml", figure=tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0 and written


def test_a_separable_confusion_is_left_alone():
    eye = pd.DataFrame(np.diag([50, 60, 70]) + 1, index=list("abc"), columns=list("abc"))
    learned = learn_taxonomy(eye, min_f1=0.9)
    assert learned.taxonomy.mapping == {"a": "a", "b": "b", "c": "c"}
    assert learned.merges == []


def test_rare_types_and_unrecognisable_types_go_unknown():
    m = pd.DataFrame(
        [[90, 5, 5, 0], [5, 90, 5, 0], [30, 30, 40, 0], [1, 1, 0, 3]],
        index=["x", "y", "weak", "rare"],
        columns=["x", "y", "weak", "rare"],
    )
    learned = learn_taxonomy(m, min_f1=0.95, min_support=10, unknown_f1=0.6)
    assert learned.taxonomy.mapping["rare"] == UNKNOWN
    assert "support 5" in learned.merges[0]["reason"]
    assert learned.taxonomy.mapping["weak"] == UNKNOWN
    assert learned.taxonomy.mapping["x"] != UNKNOWN


def test_yaml_round_trip_keeps_mapping_and_notes(tmp_path):
    learned = learn_taxonomy(_two_pairs_and_a_diffuse_type(), min_f1=0.8)
    paths = write_learned_taxonomy(learned, tmp_path / "tax.yaml", figure=tmp_path / "tax.png")
    back = Taxonomy.from_yaml(paths["yaml"])
    assert back.classes == learned.taxonomy.classes
    assert back.mapping == learned.taxonomy.mapping
    assert back.notes == learned.taxonomy.notes
    assert [m["action"] for m in back.notes["merge_tree"]] == ["merge", "merge", "unknown"]
    before = pd.read_csv(paths["confusion_before"], index_col=0)
    assert before.to_numpy().tolist() == learned.confusion_before.to_numpy().tolist()
    assert paths["figure"].read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize(
    "frame, message",
    [
        (pd.DataFrame([[1, 2]], index=["a"], columns=["a", "b"]), "same types"),
        (pd.DataFrame([[1, -2], [0, 1]], index=["a", "b"], columns=["a", "b"]), "non-negative"),
        (pd.DataFrame([[1, 0], [0, 1]], index=["a", UNKNOWN], columns=["a", UNKNOWN]), "abstain"),
    ],
)
def test_bad_confusion_is_an_input_error(frame, message):
    with pytest.raises(InputError, match=message):
        learn_taxonomy(frame)


def test_a_sink_that_absorbs_two_distinct_types_is_not_torn():
    """'Fibro' is predicted for most Epi and Endo cells; its own cells are recognised, so the
    sink stays and the absorbed types merge into it, one at a time."""
    names = ["Fibro", "Epi", "Endo", "T"]
    m = pd.DataFrame(
        [[80, 5, 5, 10], [60, 30, 0, 10], [60, 0, 30, 10], [5, 0, 5, 90]],
        index=names,
        columns=names,
    )
    learned = learn_taxonomy(m, min_f1=0.8)
    assert UNKNOWN not in learned.taxonomy.mapping.values()
    assert learned.taxonomy.mapping["T"] == "T"
    assert learned.taxonomy.mapping["Epi"] == learned.taxonomy.mapping["Fibro"]


def test_merging_stops_at_min_classes():
    m = pd.DataFrame(np.full((3, 3), 10), index=list("abc"), columns=list("abc"))
    learned = learn_taxonomy(m, min_f1=0.99, unknown_f1=0.0)
    assert learned.taxonomy.classes.n_classes == 2

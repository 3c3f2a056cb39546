"""The label-review round trip: LabelSet -> QuPath -> a pathologist's edits -> reviewed LabelSet."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from wsi_stnuc.classes import ClassTable, Taxonomy
from wsi_stnuc.errors import InputError
from wsi_stnuc.formats import LabelCols as L
from wsi_stnuc.formats import QuPath
from wsi_stnuc.st.labels import apply_taxonomy, read_labelset, write_labelset
from wsi_stnuc.st.review import (
    labelset_object_ids,
    merge_review,
    read_review,
    st_typed,
    write_labelset_qupath,
)

CLASSES = ClassTable.from_names(["epithelial", "inflammatory", "connective"])
TYPES = {"Malignant": "epithelial", "T": "inflammatory", "Fibroblast": "connective"}
EDITOR = Path(__file__).parent / "groovy" / "edit_labels.groovy"


def _labels(n: int = 12) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(0)
    types = np.array(list(TYPES))[np.arange(n) % 3]
    probs = rng.dirichlet([1, 1, 1], n).astype(np.float32)
    gdf = gpd.GeoDataFrame(
        {
            L.CELL_ID: [f"cell{i:03d}-1" for i in range(n)],
            L.CELL_TYPE: types,
            L.IMAGE_CLASS: [TYPES[t] for t in types],
            L.CONFIDENCE: rng.uniform(0.3, 0.9, n).astype(np.float32),
            L.WEIGHT: np.ones(n, np.float32),
            **{f"{L.TYPE_PROB_PREFIX}{t}": probs[:, i] for i, t in enumerate(TYPES)},
            **dict(zip(L.class_probs(CLASSES.names), probs.T, strict=True)),
        },
        geometry=shapely.buffer(shapely.points(np.c_[np.arange(n) * 30 + 20, np.full(n, 40)]), 6),
    )
    return gdf


DRAWN = [shapely.box(500, 500, 510, 509), shapely.box(520, 500, 528, 512)]


def _as_qupath_exports(path: Path, delete, reclassify, draw) -> Path:
    """Edit a file as QuPath writes its export: detections kept with their ids, drawn objects
    as annotations with fresh UUIDs; classification as ``{name, color}`` or a plain name."""
    doc = json.loads(path.read_text())
    for i, name in reclassify.items():
        doc["features"][i]["properties"]["classification"] = name
    doc["features"] = [f for i, f in enumerate(doc["features"]) if i not in delete]
    for name, geom in draw:
        props = {"objectType": "annotation"}
        if name is not None:
            props["classification"] = {"name": name, "color": [1, 2, 3]}
        doc["features"].append({"type": "Feature", "id": str(uuid.uuid4()),
                                "geometry": json.loads(shapely.to_geojson(geom)),
                                "properties": props})  # fmt: skip
    out = path.with_name("edited.geojson")
    out.write_text(json.dumps(doc))
    return out


def _check_merged(merged, labels, report, reclassified: dict[int, str | None]):
    ids = labelset_object_ids(labels)
    by_id = merged.set_index(L.OBJECT_ID)
    assert report.deleted == 2 and report.reclassified == len(reclassified) and report.drawn == 2
    assert not set(ids[[0, 5]]) & set(by_id.index)
    for i, name in reclassified.items():
        row = by_id.loc[ids[i]]
        assert row[L.IMAGE_CLASS] == (name or "unknown") and row[L.SOURCE] == L.SOURCE_REVIEWED
        assert row[L.CONFIDENCE] == 1.0 and row[L.WEIGHT] == 1.0
        probs = row[L.class_probs(CLASSES.names)].to_numpy(float)
        assert probs.tolist() == [float(c == name) for c in CLASSES.names]
    untouched = [i for i in range(len(labels)) if i not in (0, 5, *reclassified)]
    for i in untouched:
        row = by_id.loc[ids[i]]
        assert row[L.SOURCE] == L.SOURCE_ST and row[L.IMAGE_CLASS] == labels[L.IMAGE_CLASS][i]
        assert row[L.CONFIDENCE] == pytest.approx(labels[L.CONFIDENCE][i])
        assert shapely.equals_exact(row.geometry, labels.geometry[i], 0)
    manual = merged[merged[L.SOURCE] == L.SOURCE_MANUAL]
    assert sorted(manual[L.IMAGE_CLASS]) == ["connective", "unknown"]
    assert manual[L.CELL_TYPE].eq("unknown").all()
    assert sum(shapely.equals(manual.geometry.to_numpy(), d).any() for d in DRAWN) == 2


def test_merge_edits_in_qupath_export_conventions(tmp_path):
    labels = _labels()
    exported = write_labelset_qupath(labels, tmp_path / "labels.geojson", CLASSES)
    feats = json.loads(exported.read_text())["features"]
    assert [f["id"] for f in feats] == list(labelset_object_ids(labels))
    meas = feats[0]["properties"][QuPath.MEASUREMENTS]
    assert QuPath.class_prob_measurement("epithelial") in meas and L.CONFIDENCE in meas
    reclassified = {1: "connective", 2: "epithelial", 3: None}
    edited = _as_qupath_exports(exported, {0, 5}, reclassified,
                                [("connective", DRAWN[0]), (None, DRAWN[1])])  # fmt: skip
    merged, report = merge_review(labels, CLASSES, read_review(edited, CLASSES))
    _check_merged(merged, labels, report, reclassified)
    assert "inflammatory -> connective: 1" in str(report)
    # the reviewed LabelSet round-trips through its file, ids and sources included
    write_labelset(merged, tmp_path / "reviewed.parquet", CLASSES)
    back, _ = read_labelset(tmp_path / "reviewed.parquet")
    assert list(labelset_object_ids(back)) == list(merged[L.OBJECT_ID])
    # reviewing the same edits again changes nothing
    again, report2 = merge_review(back, CLASSES, read_review(edited, CLASSES))
    assert report2.deleted == report2.reclassified == report2.drawn == 0
    assert list(again[L.OBJECT_ID]) == list(merged[L.OBJECT_ID])


def test_reviewed_labels_feed_taxonomy_and_dataset():
    labels = _labels()
    edits = gpd.GeoDataFrame(
        {"id": list(labelset_object_ids(labels)), "class_name": list(labels[L.IMAGE_CLASS])},
        geometry=labels.geometry.to_numpy(),
    )
    edits.loc[1, "class_name"] = "connective"  # a T cell the pathologist calls connective
    merged, _ = merge_review(labels, CLASSES, edits)
    # a learned taxonomy that merges two classes: the pathologist's class stays where it exists
    tax = Taxonomy(ClassTable.from_names(["epithelial", "connective"]),
                   {"Malignant": "epithelial", "T": "connective", "Fibroblast": "connective"})  # fmt: skip
    reclassed = apply_taxonomy(merged, tax)
    assert reclassed[L.IMAGE_CLASS][1] == "connective"
    assert reclassed["prob_connective"][1] == 1.0 and reclassed["prob_epithelial"][1] == 0.0
    tax2 = Taxonomy(ClassTable.from_names(["epithelial", "inflammatory"]),
                    {"Malignant": "epithelial", "T": "inflammatory"})  # fmt: skip
    assert apply_taxonomy(merged, tax2)[L.IMAGE_CLASS][1] == "unknown"  # not in the new table
    assert len(st_typed(merged)) == len(labels) - 1


def test_review_errors(tmp_path):
    labels = _labels()
    exported = write_labelset_qupath(labels, tmp_path / "labels.geojson", CLASSES)
    tumor = _as_qupath_exports(exported, set(), {1: "Tumor"}, [])
    with pytest.raises(InputError, match="Tumor"):
        read_review(tumor, CLASSES)
    other = write_labelset_qupath(_labels(5).assign(cell_id=list("abcde")), tmp_path / "o.geojson",
                                  CLASSES)  # fmt: skip
    with pytest.raises(InputError, match="no object matches"):
        merge_review(labels, CLASSES, read_review(other, CLASSES), source=other)


def test_round_trip_through_qupath(groovy, qupath, tmp_path):
    """QuPath reads the exported LabelSet whole, a pathologist's edits are made with QuPath's
    own objects and written by QuPath's own GeoJSON exporter, and the merge takes them."""
    labels = _labels()
    exported = write_labelset_qupath(labels, tmp_path / "labels.geojson", CLASSES)
    (summary,) = qupath.read_whole(exported)
    assert summary["object_types"]["detection"] == len(labels)
    reclassified = {1: "connective", 2: "epithelial", 3: None}
    edits = {"delete": [0, 5], "reclassify": reclassified,
             "draw": [{"class": "connective", "xy": shapely.get_coordinates(DRAWN[0])[:-1].tolist()},
                      {"class": None, "xy": shapely.get_coordinates(DRAWN[1])[:-1].tolist()}]}  # fmt: skip
    (tmp_path / "edits.json").write_text(json.dumps(edits))
    out = tmp_path / "edited.geojson"
    res = groovy("groovy.ui.GroovyMain", str(EDITOR), str(exported), str(tmp_path / "edits.json"),
                 str(out))  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    merged, report = merge_review(labels, CLASSES, read_review(out, CLASSES))
    _check_merged(merged, labels, report, reclassified)

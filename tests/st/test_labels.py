"""LabelSet building, writing and reading."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from wsi_stnuc.classes import UNKNOWN, ClassTable, Taxonomy, load_taxonomy
from wsi_stnuc.errors import InputError
from wsi_stnuc.st.align import apply_affine
from wsi_stnuc.st.labels import apply_taxonomy, build_labelset, read_labelset, write_labelset
from wsi_stnuc.st.panels import Panel

PANEL = Panel(
    "toy",
    {
        "T": ["CD3E", "CD3D", "TRAC", "CD2"],
        "Malignant": ["EPCAM", "KRT8", "ERBB2", "CDH1"],
        "Fibroblast": ["LUM", "POSTN", "DCN", "COL1A1"],
    },
)
# µm -> level-0 px at 0.5 µm/px with an offset and a small shear: asymmetric on purpose
A = np.array([[2.0, 0.02, 30.0], [-0.01, 2.0, 12.0], [0.0, 0.0, 1.0]])


def test_build_without_slide_and_round_trip(bundle, tmp_path):
    tax = load_taxonomy()
    labels, rep = build_labelset(bundle, None, A, tax, panel=PANEL, smooth_k=10, refine=False)
    assert len(labels) == bundle.n_cells == rep.n_labels
    assert set(labels.columns) >= {"cell_id", "cell_type", "image_class", "confidence", "weight"}
    # geometry went through A
    src = shapely.get_coordinates(shapely.centroid(np.asarray(bundle.nuclei.geometry.values)))
    dst = shapely.get_coordinates(shapely.centroid(np.asarray(labels.geometry.values)))
    np.testing.assert_allclose(dst, apply_affine(A, src), atol=1e-6)
    expected = pd.Series(bundle.adata.obs["truth"]).map(tax.mapping).to_numpy()
    known = labels["image_class"].to_numpy() != UNKNOWN
    assert known.mean() > 0.6
    assert (labels["image_class"].to_numpy()[known] == expected[known]).mean() > 0.95
    assert sum(rep.per_class.values()) == bundle.n_cells
    assert "nuclei labelled" in str(rep)

    path = write_labelset(labels, tmp_path / "labels.parquet", tax.classes, extra={"note": "t"})
    back, classes = read_labelset(path)
    assert classes == tax.classes
    assert list(back["cell_id"]) == list(labels["cell_id"])
    assert shapely.equals_exact(
        np.asarray(back.geometry.values), np.asarray(labels.geometry.values), 1e-9
    ).all()


def test_refined_on_slide(bundle, he_tools):
    paint_he, ArraySlide = he_tools  # noqa: N806
    tax = load_taxonomy()
    cents_um = shapely.get_coordinates(shapely.centroid(np.asarray(bundle.nuclei.geometry.values)))
    true_px = apply_affine(A, cents_um)
    w = int(true_px[:, 0].max() + 60)
    h = int(true_px[:, 1].max() + 60)
    slide = ArraySlide(paint_he(true_px, (h, w), 8), 0.5)
    off = A.copy()
    off[:2, 2] += [8.0, -6.0]  # 5 µm misregistration
    labels, rep = build_labelset(bundle, slide, off, tax, panel=PANEL, smooth_k=10, refine=True)
    assert rep.residual_before_um > 3.0 > 1.0 > rep.residual_after_um
    got = shapely.get_coordinates(shapely.centroid(np.asarray(labels.geometry.values)))
    np.testing.assert_allclose(got, true_px, atol=1.5)


def test_outside_slide_dropped(bundle, he_tools):
    _, ArraySlide = he_tools  # noqa: N806
    tax = load_taxonomy()
    slide = ArraySlide(np.full((200, 150, 3), 255, np.uint8), 0.5)  # covers only some cells
    labels, rep = build_labelset(bundle, slide, A, tax, panel=PANEL, smooth_k=0, refine=False)
    assert rep.qc.dropped["outside_slide"] > 0
    cents = shapely.centroid(np.asarray(labels.geometry.values))
    assert (shapely.get_x(cents) < 150).all() and (shapely.get_y(cents) < 200).all()


def test_bad_inputs(bundle, tmp_path):
    tax = load_taxonomy()
    with pytest.raises(InputError, match="singular"):
        build_labelset(bundle, None, np.zeros((3, 3)) + np.eye(3) * [1, 0, 1], tax, panel=PANEL)
    labels, _ = build_labelset(bundle, None, A, tax, panel=PANEL, smooth_k=0, refine=False)
    labels.loc[0, "image_class"] = "nonsense"
    with pytest.raises(InputError, match="labels.parquet.*nonsense"):
        write_labelset(labels, tmp_path / "labels.parquet", tax.classes)
    other = tmp_path / "other.parquet"
    bundle.nuclei.to_parquet(other)
    with pytest.raises(InputError, match="other.parquet.*not a wsi-stnuc LabelSet"):
        read_labelset(other)


def test_type_and_class_probabilities_round_trip(bundle, tmp_path):
    """Typing with probabilities puts type_prob_<type> and prob_<class> columns into the
    LabelSet (class = sum of its types) and they survive writing and reading."""
    tax = load_taxonomy()
    labels, _ = build_labelset(bundle, None, A, tax, panel=PANEL, smooth_k=10, refine=False)
    type_cols = [f"type_prob_{t}" for t in PANEL.types]
    class_cols = [f"prob_{c}" for c in tax.classes.names]
    assert set(type_cols + class_cols) <= set(labels.columns)
    for t in PANEL.types:
        cls = tax.mapping[t]
        assert (labels[f"prob_{cls}"] >= labels[f"type_prob_{t}"] - 1e-6).all()
    np.testing.assert_allclose(labels[type_cols].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(labels[class_cols].sum(axis=1), 1.0, rtol=1e-5)
    back, _ = read_labelset(write_labelset(labels, tmp_path / "l.parquet", tax.classes))
    np.testing.assert_allclose(back[class_cols].to_numpy(), labels[class_cols].to_numpy())
    other = ClassTable.from_names(["x"])
    with pytest.raises(InputError, match="class probability columns"):
        write_labelset(labels.assign(image_class="x"), tmp_path / "bad.parquet", other)


def test_apply_taxonomy_reclasses_and_keeps_cells_set_aside():
    labels = gpd.GeoDataFrame(
        {
            "cell_id": ["a", "b", "c", "d", "e"],
            "cell_type": ["T", "B", "B", "Mast", "T"],
            "image_class": ["inflammatory", "inflammatory", UNKNOWN, UNKNOWN, "inflammatory"],
            "confidence": [0.9, 0.9, 0.9, 0.9, 0.1],
            "weight": 1.0,
            "type_prob_T": [0.9, 0.05, 0.1, 0.0, 0.5],
            "type_prob_B": [0.05, 0.9, 0.8, 0.1, 0.4],
            "type_prob_Mast": [0.05, 0.05, 0.1, 0.9, 0.1],
            "prob_inflammatory": [0.95, 0.95, 0.9, 0.1, 0.9],
        },
        geometry=shapely.points(np.arange(10).reshape(5, 2)),
    )
    tax = Taxonomy(ClassTable.from_names(["T_cell", "B_cell", "mast"]),
                   {"T": "T_cell", "B": "B_cell", "Mast": "mast"})  # fmt: skip
    out = apply_taxonomy(labels, tax, min_confidence=0.2)
    # c: B cells elsewhere have a class, so c was set aside for itself; d: Mast had no class
    # before (unmapped type), now it has one; e: below the confidence floor
    assert list(out["image_class"]) == ["T_cell", "B_cell", UNKNOWN, "mast", UNKNOWN]
    assert "prob_inflammatory" not in out and isinstance(out, gpd.GeoDataFrame)
    np.testing.assert_allclose(out["prob_B_cell"], labels["type_prob_B"], rtol=1e-6)
    assert list(labels["image_class"])[2] == UNKNOWN  # the input is untouched
    merged = Taxonomy(ClassTable.from_names(["lymphocyte"]),
                      {"T": "lymphocyte", "B": "lymphocyte", "Mast": UNKNOWN})  # fmt: skip
    out = apply_taxonomy(labels, merged)
    np.testing.assert_allclose(out["prob_lymphocyte"], [0.95, 0.95, 0.9, 0.1, 0.9], rtol=1e-6)
    assert list(out["image_class"]) == ["lymphocyte", "lymphocyte", UNKNOWN, UNKNOWN, UNKNOWN]

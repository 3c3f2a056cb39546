"""Paired bundles from annotated H&E + reference expression."""

from __future__ import annotations

import dataclasses

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import tifffile

from wsi_stnuc.errors import InputError
from wsi_stnuc.evaluation.annotated import AnnotatedImage, load_consep
from wsi_stnuc.slide.registry import open_slide
from wsi_stnuc.synth.noise import STNoise
from wsi_stnuc.synth.paired import (
    DEFAULT_CLASS_TO_TYPES,
    layout_mosaic,
    make_paired_bundle,
    read_expression,
    sample_reference_cells,
)


def test_layout_mosaic_has_white_gaps():
    shapes = [(30, 40), (20, 50), (35, 10), (10, 10), (5, 5)]
    corners, (h, w) = layout_mosaic(shapes, gap=8)
    boxes = shapely.box(
        corners[:, 0], corners[:, 1], corners[:, 0] + [s[1] for s in shapes],
        corners[:, 1] + [s[0] for s in shapes],
    )  # fmt: skip
    assert (shapely.bounds(boxes)[:, 2:] <= [w - 8, h - 8]).all()
    assert (corners >= 8).all()
    gaps = shapely.distance(boxes[:, None], boxes[None, :])
    assert gaps[~np.eye(len(shapes), dtype=bool)].min() >= 8


def test_sample_reference_cells_respects_classes():
    ref_types = np.array(["T", "B", "Malignant", "Fibroblast", "Endothelial", "Macrophage"] * 20)
    annotated = np.array(["inflammatory", "epithelial", "spindle", "other"] * 250)
    pick = sample_reference_cells(
        np.random.default_rng(0), annotated, ref_types, DEFAULT_CLASS_TO_TYPES
    )
    for cls, allowed in DEFAULT_CLASS_TO_TYPES.items():
        got = set(ref_types[pick[annotated == cls]])
        if allowed is not None and got:
            assert got <= set(allowed)
    assert set(ref_types[pick[annotated == "other"]]) == set(ref_types)  # any type
    with pytest.raises(ValueError, match="no reference cell"):
        sample_reference_cells(
            np.random.default_rng(0), np.array(["spindle"]), np.array(["T"]), DEFAULT_CLASS_TO_TYPES
        )


def _expression_csv(path, n=60):
    rng = np.random.default_rng(0)
    types = np.array(["T", "Malignant", "Fibroblast"])[np.arange(n) % 3]
    df = pd.DataFrame(rng.poisson(3, (n, 5)), columns=[f"G{i}" for i in range(5)])
    df.insert(0, "cell_type", types)
    df.insert(0, "cell_id", [f"ref{i}" for i in range(n)])
    df.to_csv(path, index=False)
    return path


def test_read_expression_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"cell_id": [1], "G": [2]}).to_csv(bad, index=False)
    with pytest.raises(InputError, match="cell_type"):
        read_expression(bad)
    ids, types, counts, genes = read_expression(_expression_csv(tmp_path / "e.csv"))
    assert counts.dtype == np.int32 and counts.shape == (60, 5) and genes[0] == "G0"


def _toy_image(name, classes=True):
    inst = np.zeros((64, 64), dtype=np.int32)
    inst[5:15, 5:15] = 1
    inst[30:40, 20:28] = 2
    inst[50:60, 45:60] = 3
    rgb = np.full((64, 64, 3), 230, dtype=np.uint8)
    rgb[inst > 0] = (80, 60, 140)
    inst_class = np.array([0, 2, 3, 4], dtype=np.uint8) if classes else None
    names = {2: "inflammatory", 3: "epithelial", 4: "spindle"}
    return AnnotatedImage(name, rgb, inst, inst_class, names, 0.25, name.split("_")[0])


def test_paired_bundle_on_toy_images(tmp_path):
    csv = _expression_csv(tmp_path / "e.csv")
    images = [_toy_image("a_1"), _toy_image("a_2"), _toy_image("b_1", classes=False)]
    b = make_paired_bundle(images, csv, tmp_path / "p", noise=STNoise(), seed=1)
    t = gpd.read_parquet(b.truth)
    assert len(t) == 9 and b.n_cells == 9
    assert list(t["source"].unique()) == ["a", "b"]
    first = t[t["image"] == "a_1"].sort_values("cell_id")
    assert list(first["annotated_class"]) == ["inflammatory", "epithelial", "spindle"]
    assert list(first["cell_type"]) == ["T", "Malignant", "Fibroblast"]
    assert set(t.loc[t["image"] == "b_1", "annotated_class"]) == {"unknown"}
    assert set(t.loc[t["image"] == "b_1", "image_class"]) == {"unknown"}  # no class, no label
    assert list(first["image_class"]) == ["inflammatory", "epithelial", "connective"]
    # polygons follow the instance pixels (areas 100, 80, 150 px), placed in the mosaic
    np.testing.assert_allclose(first.geometry.area, [100, 80, 150], rtol=0.15)
    x0, y0 = pd.read_csv(b.placements).loc[0, ["x0", "y0"]]
    cen = shapely.get_coordinates(first.geometry.centroid.values) - (x0, y0)
    np.testing.assert_allclose(cen, [[10, 10], [24, 35], [52.5, 55]], atol=0.3)
    # A lossless bundle keeps the annotated pixels exactly at their placements.
    exact = make_paired_bundle(images, csv, tmp_path / "z", compression="zlib", seed=1)
    with open_slide(exact.slide) as slide:
        got = slide.read_level(0, int(x0), int(y0), *images[0].rgb.shape[1::-1])
    assert np.array_equal(got, images[0].rgb)
    with pytest.raises(ValueError, match="resolutions"):
        other = _toy_image("c_1")
        other.mpp = 0.5
        make_paired_bundle([images[0], other], csv, tmp_path / "q")


@pytest.mark.realdata
def test_paired_bundle_from_consep(data_dir, tmp_path):
    folder = data_dir / "nuclei" / "consep_train"
    csv = data_dir / "expression" / "xenium_breast_cells.csv.gz"
    if not folder.is_dir() or not csv.exists():
        pytest.skip("CoNSeP subset or reference expression absent")
    xen = pytest.importorskip("wsi_stnuc.st.xenium")
    images = load_consep(folder, ["train_10_000", "train_10_001", "train_3_004"])
    noise = dataclasses.replace(STNoise.mild(), spillover=0.0)
    b = make_paired_bundle(images, csv, tmp_path / "p", seed=0, noise=noise)
    t = gpd.read_parquet(b.truth)
    assert len(t) == sum(im.n_instances for im in images)
    # mapping of annotated class -> fine type obeys the default table
    for cls, allowed in DEFAULT_CLASS_TO_TYPES.items():
        if allowed is not None:
            assert set(t.loc[t["annotated_class"] == cls, "cell_type"]) <= set(allowed)
    # the slide holds the real pixels where the placements say
    place = pd.read_csv(b.placements)
    assert list(place["source_image"]) == ["train_10", "train_10", "train_3"]
    slide = tifffile.imread(b.slide)
    for im, row in zip(images, place.itertuples(), strict=True):
        crop = slide[row.y0 : row.y0 + row.height, row.x0 : row.x0 + row.width].astype(int)
        assert np.abs(crop - im.rgb).mean() < 4  # JPEG q95 only
    # ST cells that are one nucleus carry exactly the real counts of their reference cell
    st = xen.read_xenium(b.xenium_dir)
    _, _, ref_counts, genes = read_expression(csv)
    ref_ids = pd.read_csv(csv, usecols=["cell_id"])["cell_id"].astype(str).to_numpy()
    ok = t[t["st_status"] == "ok"].head(30)
    rows = pd.Index(ref_ids).get_indexer(ok["reference_cell"])
    got = np.asarray(st.adata[ok["st_cell_id"].to_numpy()][:, genes].X.todense())
    np.testing.assert_array_equal(got, ref_counts[rows])
    assert 0.0 < (t["st_status"] == "missed").mean() < 0.12  # mild noise by default

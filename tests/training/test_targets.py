"""Targets from hand-made LabelSet polygons and from instance maps."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely

from wsi_stnuc.classes import IGNORE_CLASS, ClassTable
from wsi_stnuc.errors import InputError
from wsi_stnuc.training.targets import hv_maps, rasterize_targets, targets_from_instances

CLASSES = ClassTable.from_names(["epithelial", "inflammatory"])


def labelset(rows):
    geoms, image_class, weight = zip(*rows, strict=True)
    return gpd.GeoDataFrame(
        {"cell_id": [str(i) for i in range(len(rows))], "image_class": list(image_class),
         "weight": list(weight)},
        geometry=list(geoms),
    )  # fmt: skip


def test_level0_to_model_px_transform_with_scale():
    # Level-0 box x [30, 50), y [10, 30); tile origin (10, 0), sx = 2, sy = 2.5 ->
    # model px x [10, 20), y [4, 12).
    labels = labelset([(shapely.box(30, 10, 50, 30), "inflammatory", 1.0)])
    t = rasterize_targets(labels, 10, 0, 2.0, 2.5, (16, 24), CLASSES)
    rows, cols = np.nonzero(t.inst)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (4, 11, 10, 19)
    assert t.inst.dtype == np.int32 and t.cls.dtype == np.uint8
    assert set(np.unique(t.cls)) == {0, 2}
    assert t.hv.shape == (2, 16, 24) and t.hv.dtype == np.float32


def test_classes_unknown_and_tile_clipping():
    labels = labelset([
        (shapely.box(2, 2, 10, 10), "epithelial", 1.0),
        (shapely.box(12, 2, 20, 10), "unknown", 1.0),
        (shapely.box(2, 12, 10, 20), "a type nobody listed", 1.0),
        (shapely.box(28, 28, 40, 40), "epithelial", 1.0),  # cut by the tile edge
        (shapely.box(100, 100, 110, 110), "epithelial", 1.0),  # outside
    ])  # fmt: skip
    t = rasterize_targets(labels, 0, 0, 1.0, 1.0, (32, 32), CLASSES)
    assert t.inst.max() == 4
    assert t.cls[5, 5] == 1
    assert t.cls[5, 15] == IGNORE_CLASS
    assert t.cls[15, 5] == IGNORE_CLASS
    assert t.cls[30, 30] == 1 and t.inst[30, 30] > 0
    assert t.cls[0, 0] == 0


def test_hv_ranges_and_signs():
    labels = labelset([(shapely.Point(16, 16).buffer(8), "epithelial", 1.0)])
    t = rasterize_targets(labels, 0, 0, 1.0, 1.0, (32, 32), CLASSES)
    h, v = t.hv
    assert h.min() == pytest.approx(-1) and h.max() == pytest.approx(1)
    assert v.min() == pytest.approx(-1) and v.max() == pytest.approx(1)
    assert h[16, 10] < 0 < h[16, 22]  # left negative, right positive
    assert v[10, 16] < 0 < v[22, 16]  # top negative, bottom positive
    assert np.all(t.hv[:, t.inst == 0] == 0)


def test_weights_lower_near_uncertain_outlines():
    labels = labelset([
        (shapely.box(2, 2, 14, 14), "epithelial", 1.0),
        (shapely.box(18, 2, 30, 14), "epithelial", 0.5),
    ])  # fmt: skip
    t = rasterize_targets(labels, 0, 0, 1.0, 1.0, (16, 32), CLASSES, boundary_weight=0.5)
    assert t.weight[8, 8] == 1.0  # confident cell: interior and outline untouched
    assert t.weight[8, 2] == 1.0
    assert t.weight[8, 24] == pytest.approx(0.5)  # uncertain interior
    assert t.weight[8, 18] == pytest.approx(0.5 * (0.5 + 0.5 * 0.5))  # its outline
    assert t.weight[8, 17] == pytest.approx(0.375)  # band reaches outside the cell
    assert t.weight[15, 0] == 1.0


def test_missing_class_column_is_input_error():
    labels = gpd.GeoDataFrame({"cell_id": ["a"]}, geometry=[shapely.box(0, 0, 4, 4)])
    with pytest.raises(InputError, match="image_class"):
        rasterize_targets(labels, 0, 0, 1, 1, (8, 8), CLASSES)


def test_targets_from_instances_and_hv_of_flipped_map():
    inst = np.zeros((20, 20), np.int32)
    inst[2:9, 3:12] = 4
    inst[11:18, 5:15] = 7
    t = targets_from_instances(inst, {4: 2, 7: 255})
    assert t.cls[5, 5] == 2 and t.cls[14, 8] == IGNORE_CLASS and t.cls[0, 0] == 0
    assert np.array_equal(t.inst, inst)
    flipped = hv_maps(inst[:, ::-1])
    np.testing.assert_allclose(flipped[0], -t.hv[0][:, ::-1], atol=1e-6)
    np.testing.assert_allclose(flipped[1], t.hv[1][:, ::-1], atol=1e-6)


def test_confidence_weights_the_class_only():
    labels = labelset([
        (shapely.box(2, 2, 14, 14), "epithelial", 1.0),
        (shapely.box(18, 2, 30, 14), "inflammatory", 1.0),
    ])  # fmt: skip
    labels["confidence"] = [0.3, np.nan]  # nan: no typing score -> trusted
    t = rasterize_targets(labels, 0, 0, 1.0, 1.0, (16, 32), CLASSES)
    assert t.cls_weight[8, 8] == pytest.approx(0.3) and t.weight[8, 8] == 1.0
    assert t.cls_weight[8, 24] == 1.0 and t.cls_weight[15, 0] == 1.0
    assert t.cls_weight.shape == t.inst.shape and t.cls_weight.dtype == np.float32
    m = targets_from_instances(t.inst, {1: 1, 2: 2}, class_weight={1: 0.25})
    assert m.cls_weight[8, 8] == 0.25 and m.cls_weight[8, 24] == 1.0 and m.weight[8, 8] == 1.0


def test_class_probabilities_follow_their_instances():
    """prob_<class> columns become per-instance rows in instance order; polygons outside the
    tile do not take a row; without all columns there are none."""
    labels = labelset([
        (shapely.box(200, 200, 210, 210), "epithelial", 1.0),  # outside the tile
        (shapely.box(18, 2, 30, 14), "inflammatory", 1.0),
        (shapely.box(2, 2, 14, 14), "epithelial", 1.0),
    ])  # fmt: skip
    labels["prob_epithelial"] = [0.9, 0.2, 0.6]
    labels["prob_inflammatory"] = [0.1, 0.7, 0.3]
    t = rasterize_targets(labels, 0, 0, 1.0, 1.0, (16, 32), CLASSES)
    assert t.class_probs.shape == (2, 2) and t.class_probs.dtype == np.float32
    np.testing.assert_allclose(t.class_probs[t.inst[8, 8] - 1], [0.6, 0.3])
    np.testing.assert_allclose(t.class_probs[t.inst[8, 24] - 1], [0.2, 0.7])
    assert rasterize_targets(labels.drop(columns="prob_inflammatory"), 0, 0, 1.0, 1.0, (16, 32),
                             CLASSES).class_probs is None  # fmt: skip
    empty = rasterize_targets(labels, 500, 500, 1.0, 1.0, (16, 32), CLASSES)
    assert empty.class_probs.shape == (0, 2)

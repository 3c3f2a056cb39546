"""ST label repairs against the H&E: snapping shifted outlines, ignoring unlabelled nuclei."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import shapely
from skimage.draw import disk

from wsi_stnuc.classes import ClassTable
from wsi_stnuc.training.label_refine import (
    refine_tile_targets,
    shift_geometries,
    snap_offsets,
    unlabelled_nuclei_mask,
)

CLASSES = ClassTable.from_names(["epithelial"])


def _discs(shape, centres, radius):
    inst = np.zeros(shape, np.int32)
    for i, (x, y) in enumerate(centres, start=1):
        rr, cc = disk((y, x), radius, shape=shape)
        inst[rr, cc] = i
    return inst


def test_snap_offsets_moves_onto_the_overlapping_nucleus():
    he = _discs((64, 64), [(20, 20), (45, 40)], 6)
    st = _discs((64, 64), [(23, 18), (45, 40), (5, 60)], 6)  # 1 shifted, 2 exact, 3 alone
    off = snap_offsets(st, he, max_shift_px=5)
    assert off.shape == (4, 2)
    np.testing.assert_allclose(off[1], (-3, 2), atol=0.3)
    np.testing.assert_allclose(off[2], (0, 0), atol=1e-9)
    assert (off[3] == 0).all()  # no H&E nucleus under it
    assert (snap_offsets(st, he, max_shift_px=2)[1] == 0).all()  # too far


def test_two_st_nuclei_on_one_blob_stay_put():
    he = _discs((64, 64), [(30, 30)], 10)
    st = _discs((64, 64), [(25, 30), (36, 30)], 5)
    assert (snap_offsets(st, he, max_shift_px=20) == 0).all()


def test_unlabelled_nuclei_mask():
    he = _discs((64, 64), [(15, 15), (45, 45)], 6)
    st = _discs((64, 64), [(16, 15)], 6)
    mask = unlabelled_nuclei_mask(st, he, margin_px=1)
    assert mask[45, 45] and not mask[15, 15]
    assert not (mask & (st > 0)).any()
    assert mask.sum() > (he == 2).sum()  # grown by the margin


def test_shift_geometries_keeps_input():
    geoms = np.array([shapely.box(0, 0, 1, 1), shapely.box(5, 5, 6, 7)])
    moved = shift_geometries(geoms, np.array([[1.0, 0.0], [0.0, -2.0]]))
    assert shapely.equals(moved[0], shapely.box(1, 0, 2, 1))
    assert shapely.equals(moved[1], shapely.box(5, 3, 6, 5))
    assert shapely.equals(geoms[0], shapely.box(0, 0, 1, 1))


def _tile_with_missing_and_shifted_nuclei():
    """Dark discs on pink at 0.5 µm/px; the LabelSet misses one and is 3 px off on another."""
    rng = np.random.default_rng(0)
    image = rng.normal((235, 190, 210), 4, (96, 96, 3))
    centres = [(24.0, 24.0), (70.0, 30.0), (40.0, 72.0)]
    for x, y in centres:
        rr, cc = disk((y - 0.5, x - 0.5), 7, shape=(96, 96))  # pixel centres, as rasterised
        image[rr, cc] = (90, 40, 140)
    image = np.clip(image, 0, 255).astype(np.uint8)
    polys = shapely.buffer(shapely.points([(27.0, 24.0), (70.0, 30.0)]), 7)  # third missing
    labels = gpd.GeoDataFrame({"image_class": ["epithelial"] * 2}, geometry=polys)
    return image, labels


def test_refine_tile_targets_snaps_and_ignores():
    image, labels = _tile_with_missing_and_shifted_nuclei()
    plain, stats = refine_tile_targets(labels, image, 0, 0, 1, 1, CLASSES, 0.5)
    assert stats == {"snapped": 0, "ignored_px": 0}
    assert plain.weight[72, 40] == 1 and plain.inst[72, 40] == 0  # missed nucleus = background
    fixed, stats = refine_tile_targets(labels, image, 0, 0, 1, 1, CLASSES, 0.5, snap_um=3.0,
                                       ignore_unlabelled=True)  # fmt: skip
    assert stats["snapped"] == 1 and stats["ignored_px"] > 100
    assert fixed.weight[72, 40] == 0  # ignored, not taught as background
    # The shifted outline now sits on its H&E nucleus: its left edge is covered.
    assert plain.inst[24, 19] == 0 and fixed.inst[24, 19] > 0


def test_refine_tile_targets_with_a_label_drawn_nowhere():
    """A label that covers no pixel centre (drawn nowhere, last in the tile) keeps its place."""
    image, labels = _tile_with_missing_and_shifted_nuclei()
    hidden = gpd.GeoDataFrame({"image_class": ["epithelial"]},
                              geometry=[shapely.Point(90.2, 90.2).buffer(0.1)])  # fmt: skip
    both = gpd.GeoDataFrame(gpd.pd.concat([labels, hidden], ignore_index=True))
    fixed, stats = refine_tile_targets(both, image, 0, 0, 1, 1, CLASSES, 0.5, snap_um=3.0)
    assert stats["snapped"] == 1 and fixed.inst.max() == 2

"""ST noise: fractions as requested, misregistration as requested, identity when off."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import shapely

from wsi_stnuc.synth.bundle import st_status
from wsi_stnuc.synth.noise import STNoise, apply_st_noise, jitter_outlines, spill_counts

MPP = 0.5


def _grid(n_side=40, spacing=16.0, radius=6.0, seed=0):
    rng = np.random.default_rng(seed)
    g = (
        np.stack(np.meshgrid(np.arange(n_side), np.arange(n_side)), -1).reshape(-1, 2) + 1
    ) * spacing
    g = g + rng.uniform(-1.5, 1.5, g.shape)
    return shapely.buffer(shapely.points(g), radius, quad_segs=8)


def test_zero_noise_is_identity():
    polys = _grid(10)
    res = apply_st_noise(polys, MPP, STNoise(), np.random.default_rng(0))
    np.testing.assert_array_equal(res.assignment, np.arange(len(polys)))
    np.testing.assert_array_equal(res.primary, np.arange(len(polys)))
    assert shapely.equals_exact(res.polygons, polys, tolerance=1e-9).all()
    np.testing.assert_allclose(res.misregistration, np.eye(3), atol=1e-12)


@pytest.mark.parametrize("missed", [0.05, 0.15])
def test_missed_fraction(missed):
    polys = _grid()
    res = apply_st_noise(polys, MPP, STNoise(missed_fraction=missed), np.random.default_rng(1))
    frac = (res.assignment < 0).mean()
    assert abs(frac - missed) < 0.025
    assert len(res.polygons) == (res.assignment >= 0).sum()


def test_merged_pairs_share_one_cell():
    polys = _grid(spacing=14.0)  # neighbours 2 px apart = 1 µm: merge candidates everywhere
    noise = STNoise(merged_fraction=0.10, merge_distance_um=2.0)
    res = apply_st_noise(polys, MPP, noise, np.random.default_rng(2))
    status = st_status(res.assignment)
    assert abs((status == "merged").mean() - 0.10) < 0.01
    sizes = np.bincount(res.assignment)
    assert set(np.unique(sizes)) == {1, 2}
    merged_st = np.flatnonzero(sizes == 2)
    blobs = res.polygons[merged_st]
    assert (shapely.get_type_id(blobs) == 3).all()  # one Polygon per merged cell
    # the blob covers both true nuclei
    members = [np.flatnonzero(res.assignment == i) for i in merged_st[:20]]
    for blob, (a, b) in zip(blobs[:20], members, strict=True):
        assert shapely.area(shapely.intersection(blob, polys[a])) > 0.95 * shapely.area(polys[a])
        assert shapely.area(shapely.intersection(blob, polys[b])) > 0.95 * shapely.area(polys[b])


def test_merge_shortfall_warns(caplog):
    polys = _grid(6, spacing=60.0)  # nobody is close enough to merge
    with caplog.at_level(logging.WARNING):
        res = apply_st_noise(polys, MPP, STNoise(merged_fraction=0.2), np.random.default_rng(0))
    assert "requested merges" in caplog.text
    assert (st_status(res.assignment) == "ok").all()


def test_global_shift_magnitude():
    polys = _grid(10)
    res = apply_st_noise(polys, MPP, STNoise(shift_um=3.0), np.random.default_rng(3))
    d = shapely.get_coordinates(shapely.centroid(res.polygons)) - shapely.get_coordinates(
        shapely.centroid(polys)
    )
    np.testing.assert_allclose(np.hypot(*d.T), 3.0 / MPP, rtol=1e-6)
    assert np.ptp(d, axis=0).max() < 1e-6  # a rigid shift: same for every nucleus


def test_jitter_keeps_valid_overlapping_outlines():
    polys = _grid(10)
    out = jitter_outlines(polys, np.random.default_rng(4), jitter_px=1.0, offset_px=0.5)
    assert shapely.is_valid(out).all() and (shapely.get_type_id(out) == 3).all()
    iou = shapely.area(shapely.intersection(out, polys)) / shapely.area(shapely.union(out, polys))
    assert 0.6 < np.median(iou) < 0.98  # changed, but the same nucleus


def test_spillover_adds_neighbour_transcripts():
    polys = _grid(10, spacing=16.0, radius=6.0)  # outlines ~4 px = 2 µm apart, diagonals 5 µm
    row, col = np.divmod(np.arange(len(polys)), 10)
    kind = (row + col) % 2  # checkerboard: every close neighbour is of the other kind
    counts = np.zeros((len(polys), 2), dtype=np.int64)
    counts[np.arange(len(polys)), kind] = 1000
    out = spill_counts(counts, polys, MPP, 0.1, 3.0, np.random.default_rng(0))
    np.testing.assert_array_equal(out[np.arange(len(polys)), kind], 1000)  # own kept, no self-leak
    other = out[np.arange(len(polys)), 1 - kind]
    inner = (row > 0) & (row < 9) & (col > 0) & (col < 9)
    assert 330 < other[inner].mean() < 470  # 4 neighbours x 10 % x 1000
    assert 130 < other[0] < 270  # a corner has 2 neighbours
    far = spill_counts(counts, polys, MPP, 0.1, 0.2, np.random.default_rng(0))
    np.testing.assert_array_equal(far, counts)  # gaps are >= 0.5 µm

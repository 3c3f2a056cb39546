"""``heads_to_instances`` gives exactly what the plain whole-tile algorithm gives.

The production version floods only foreground components holding several markers, and only
their markers' rims; ``_reference`` below is the straightforward version it replaced
(full-image hole filling, one watershed over the whole tile, ``relabel_sequential``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential, watershed

from wsi_stnuc.model.postprocess import boundary_energy, heads_to_instances
from wsi_stnuc.training.targets import hv_maps


def _remove_small(labels, min_area):
    if min_area <= 1 or labels.max() == 0:
        return labels
    areas = np.bincount(labels.ravel())
    small = areas < min_area
    small[0] = False
    labels = labels.copy()
    labels[small[labels]] = 0
    return labels


def _reference(
    np_prob, hv, tp_prob, np_threshold=0.5, energy_threshold=0.05, min_area_px=10, marker_radius=1
):
    np_prob = np.asarray(np_prob, dtype=np.float32)
    hv = np.asarray(hv, dtype=np.float32)
    fg = ndi.binary_fill_holes(np_prob >= np_threshold)
    fg_lab, _ = ndi.label(fg)
    fg = _remove_small(fg_lab, min_area_px) > 0
    energy = boundary_energy(hv) * fg
    struct = ndi.generate_binary_structure(2, 1)
    markers = ndi.binary_fill_holes(fg & (energy < energy_threshold))
    if marker_radius > 0:
        markers = ndi.binary_opening(markers, struct, iterations=marker_radius)
    marker_lab, _ = ndi.label(markers)
    marker_lab = _remove_small(marker_lab, max(2, min_area_px // 4))
    inst = watershed(ndi.gaussian_filter(energy, sigma=1.0), marker_lab, mask=fg)
    inst, _, _ = relabel_sequential(_remove_small(inst, min_area_px))
    inst = inst.astype(np.int32)
    n = int(inst.max())
    flat = inst.ravel()
    area = np.bincount(flat, minlength=n + 1).astype(np.float64)
    safe = np.maximum(area, 1.0)
    rows, cols = np.indices(inst.shape, dtype=np.float64)
    table = {
        "label": np.arange(1, n + 1, dtype=np.int32),
        "class_id": np.zeros(n, np.int32),
        "det_prob": (np.bincount(flat, np_prob.ravel(), minlength=n + 1) / safe)[1:].astype(
            np.float32
        ),
    }
    if tp_prob is not None and tp_prob.shape[0] > 1:
        k = tp_prob.shape[0] - 1
        means = np.stack(
            [np.bincount(flat, tp_prob[c].ravel(), minlength=n + 1)[1:] for c in range(1, k + 1)],
            axis=1,
        )
        means /= np.maximum(means.sum(axis=1, keepdims=True), 1e-12)
        table["class_id"] = (np.argmax(means, axis=1) + 1).astype(np.int32)
        for c in range(k):
            table[f"prob_{c + 1}"] = means[:, c].astype(np.float32)
    table["area_px"] = area[1:].astype(np.int64)
    table["centroid_x"] = (np.bincount(flat, cols.ravel(), minlength=n + 1) / safe + 0.5)[1:]
    table["centroid_y"] = (np.bincount(flat, rows.ravel(), minlength=n + 1) / safe + 0.5)[1:]
    return inst, pd.DataFrame(table)


def _discs(shape, centres, radii):
    """Discs split by nearest (radius-scaled) centre: touching nuclei."""
    rr, cc = np.indices(shape)
    d = np.stack(
        [np.hypot(rr - r, cc - c) / rad for (r, c), rad in zip(centres, radii, strict=True)]
    )
    return np.where(d.min(0) <= 1, d.argmin(0) + 1, 0).astype(np.int32)


def _heads(inst, rng, noise=0.0, n_classes=3):
    fg = (inst > 0).astype(np.float32)
    np_prob = fg
    hv = hv_maps(inst)
    if noise:
        np_prob = np.clip(ndi.gaussian_filter(fg, 1.0) + rng.normal(0, noise, fg.shape), 0, 1)
        hv = np.clip(hv + rng.normal(0, noise / 2, hv.shape), -1, 1)
    tp = rng.random((n_classes + 1, *inst.shape)).astype(np.float32)
    tp /= tp.sum(0, keepdims=True)
    return np_prob.astype(np.float32), hv.astype(np.float32), tp


def _random_tile(size, rng):
    n = int(0.004 * size * size) + 1
    centres = rng.uniform(-6, size + 6, (n, 2))
    near = rng.random(n) < 0.4
    centres[near] = centres[rng.integers(0, n, near.sum())] + rng.normal(0, 6, (near.sum(), 2))
    return _discs((size, size), centres, rng.uniform(3, 10, n))


def _assert_same(heads, **kwargs):
    got_inst, got_info = heads_to_instances(*heads, **kwargs)
    ref_inst, ref_info = _reference(*heads, **kwargs)
    assert got_inst.dtype == np.int32
    np.testing.assert_array_equal(got_inst, ref_inst)
    pd.testing.assert_frame_equal(got_info, ref_info, check_exact=True)
    return got_inst


@pytest.mark.parametrize("seed", range(8))
def test_random_touching_nuclei_match_reference(seed):
    rng = np.random.default_rng(seed)
    inst = _random_tile(int(rng.choice([96, 160, 320])), rng)
    _assert_same(_heads(inst, rng, noise=float(rng.choice([0.0, 0.05, 0.1]))))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_area_px": 1},
        {"min_area_px": 0, "marker_radius": 0},
        {"marker_radius": 2, "energy_threshold": 0.25},
        {"energy_threshold": 0.4},
        {"np_threshold": 0.3, "min_area_px": 30},
    ],
)
def test_options_match_reference(kwargs):
    rng = np.random.default_rng(1)
    _assert_same(_heads(_random_tile(128, rng), rng, noise=0.08), **kwargs)


def test_untrained_like_noise_matches_reference():
    rng = np.random.default_rng(2)
    np_prob = ndi.gaussian_filter(rng.random((128, 128)), 1.5).astype(np.float32)
    np_prob = (np_prob - np_prob.min()) / np.ptp(np_prob)
    hv = rng.uniform(-1, 1, (2, 128, 128)).astype(np.float32)
    _assert_same((np_prob, hv, None))


def test_edge_cases_match_reference():
    rng = np.random.default_rng(3)
    empty = np.zeros((40, 40), np.int32)
    inst = _assert_same(_heads(empty, rng))
    assert inst.max() == 0
    border = _discs((40, 50), [(0, 0)], [9])  # one nucleus cut by the tile's corner
    assert _assert_same(_heads(border, rng)).max() == 1
    # a symmetric grid of touching nuclei, ties in the relief included
    centres = [(r, c) for r in range(8, 72, 14) for c in range(8, 72, 14)]
    grid = _discs((72, 72), centres, [8] * len(centres))
    assert _assert_same(_heads(grid, rng)).max() > 1
    # a nucleus with a hole in the probability map, and one fully covering the tile
    ring = _discs((40, 40), [(20, 20)], [12])
    np_prob, hv, tp = _heads(ring, rng)
    np_prob[18:22, 18:22] = 0
    _assert_same((np_prob, hv, tp))
    _assert_same((np.ones((24, 24), np.float32), np.zeros((2, 24, 24), np.float32), None))


@pytest.mark.parametrize("radius", [0, 1, 2, 3])
def test_open4_is_binary_opening(radius):
    from wsi_stnuc.model.postprocess import _fill_holes, _open4

    rng = np.random.default_rng(radius)
    struct = ndi.generate_binary_structure(2, 1)
    for shape in [(1, 7), (5, 1), (2, 2), (37, 53)]:
        mask = rng.random(shape) < 0.7
        want = ndi.binary_opening(mask, struct, iterations=radius) if radius else mask
        np.testing.assert_array_equal(_open4(mask, radius), want)
        np.testing.assert_array_equal(_fill_holes(mask), ndi.binary_fill_holes(mask))

"""The packed contour tracing gives exactly the rings of one ``find_contours`` per nucleus."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import find_contours

from wsi_stnuc.inference.stitch import _contour_rings


def _reference(inst, labels):
    """The implementation before issue #6: one padded crop and one call per label."""
    slices = ndi.find_objects(inst)
    coords = []
    for lab in labels:
        sl = slices[lab - 1] if lab - 1 < len(slices) else None
        if sl is None:
            coords.append(np.zeros((0, 2)))
            continue
        crop = np.pad(inst[sl] == lab, 1).astype(np.float32)
        ring = max(find_contours(crop, 0.5), key=len)
        coords.append(ring[:, ::-1] + (sl[1].start - 0.5, sl[0].start - 0.5))
    lengths = np.array([len(c) for c in coords], dtype=np.int64)
    return (np.concatenate(coords) if coords else np.zeros((0, 2))), lengths


def _random_labels(shape, n, rng):
    """Touching blobs of irregular shape, some cut by the border, some in two pieces."""
    seeds = np.zeros(shape, np.int32)
    idx = rng.integers(0, seeds.size, n)
    seeds.ravel()[idx] = np.arange(1, n + 1)
    dist, (ri, ci) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    lab = seeds[ri, ci]
    lab[dist > rng.uniform(3, 9)] = 0
    lab[rng.random(shape) < 0.03] = 0  # specks of background: holes and split fragments
    return lab


def _assert_same(inst, labels):
    got, got_len = _contour_rings(inst, labels)
    ref, ref_len = _reference(inst, labels)
    np.testing.assert_array_equal(got_len, ref_len)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("seed", range(6))
def test_packed_rings_equal_one_call_per_label(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(40, 330, 2))
    inst = _random_labels(shape, int(rng.integers(1, 300)), rng)
    labels = np.unique(inst)[1:]
    _assert_same(inst, labels)
    _assert_same(inst, rng.permutation(labels)[: len(labels) // 2])  # a subset, any order


def test_edge_cases():
    inst = np.zeros((20, 1500), np.int32)
    inst[2:18, 1:1499] = 3  # wider than the canvas, touching nothing
    inst[0, 0] = 1  # a lone pixel in the corner
    inst[19, 1499] = 2
    inst[5:10, 5:10] = 4  # a hole in label 3 holding label 4
    _assert_same(inst, np.array([1, 2, 3, 4]))
    _assert_same(inst, np.array([4, 3]))
    got, lengths = _contour_rings(inst, np.array([5, 3]))  # label 5 is absent
    assert lengths[0] == 0 and lengths[1] > 0
    got, lengths = _contour_rings(inst, np.array([], dtype=np.int64))
    assert got.shape == (0, 2) and lengths.shape == (0,)


def test_trace_equals_find_contours():
    """Vertex for vertex and ring for ring, saddle squares (diagonal pixels) included."""
    from wsi_stnuc.inference.stitch import _trace_contours

    rng = np.random.default_rng(7)
    for _ in range(150):
        h, w = rng.integers(1, 50, 2)
        mask = np.zeros((h + 2, w + 2), bool)
        noise = ndi.gaussian_filter(rng.random((h, w)), rng.uniform(0.3, 2))
        mask[1:-1, 1:-1] = noise > rng.uniform(0.45, 0.55)
        want = find_contours(mask.astype(np.float32), 0.5)
        pts, lengths = _trace_contours(mask)
        got = np.split(pts, np.cumsum(lengths)[:-1]) if len(lengths) else []
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)

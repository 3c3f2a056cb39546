"""``pixel_features`` sums nucleus pixels only; the result is exactly the whole-tile version."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from wsi_stnuc.formats import NucleusCols
from wsi_stnuc.inference.features import pixel_features
from wsi_stnuc.stain import eosin_od, hematoxylin_od


def _reference(inst, labels, rgb, px_um_x, px_um_y):
    """The implementation before issue #6 (whole-tile coordinate arrays and bincounts)."""
    flat = inst.ravel()
    n = int(max(inst.max(), labels.max(initial=0))) + 1
    rows, cols = np.indices(inst.shape, dtype=np.float64)
    x, y = cols * px_um_x, rows * px_um_y

    def sums(w):
        return np.bincount(flat, None if w is None else w.ravel(), minlength=n)

    m0 = np.maximum(sums(None), 1.0)
    mx, my = sums(x) / m0, sums(y) / m0
    mu20 = sums(x * x) / m0 - mx**2
    mu02 = sums(y * y) / m0 - my**2
    mu11 = sums(x * y) / m0 - mx * my
    half_trace = (mu20 + mu02) / 2
    root = np.sqrt(np.maximum(((mu20 - mu02) / 2) ** 2 + mu11**2, 0.0))
    l1, l2 = half_trace + root, np.maximum(half_trace - root, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ecc = np.where(l1 > 0, np.sqrt(np.clip(1.0 - l2 / l1, 0.0, 1.0)), 0.0)
    return pd.DataFrame(
        {
            NucleusCols.ECCENTRICITY: ecc[labels],
            NucleusCols.MEAN_H_OD: (sums(hematoxylin_od(rgb)) / m0)[labels].astype(np.float32),
            NucleusCols.MEAN_E_OD: (sums(eosin_od(rgb)) / m0)[labels].astype(np.float32),
        }
    )


@pytest.mark.parametrize("seed", range(4))
def test_pixel_features_equal_whole_tile_sums(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(30, 320, 2))
    inst, _ = ndi.label(ndi.gaussian_filter(rng.random(shape), 2) > 0.52)
    inst = inst.astype(np.int32)
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    labels = np.unique(inst)[1:]
    labels = np.append(rng.permutation(labels)[: max(1, len(labels) // 2)], inst.max() + 3)
    args = (inst, labels, rgb, 0.5 * (1 + seed), 0.37)
    pd.testing.assert_frame_equal(pixel_features(*args), _reference(*args), check_exact=True)


def test_empty_tile():
    inst = np.zeros((16, 16), np.int32)
    rgb = np.full((16, 16, 3), 200, np.uint8)
    labels = np.array([], dtype=np.int64)
    args = (inst, labels, rgb, 0.5, 0.5)
    pd.testing.assert_frame_equal(pixel_features(*args), _reference(*args), check_exact=True)

from __future__ import annotations

import numpy as np
import pytest

from wsi_stnuc.slide.resample import axis_weights, resample_region


@pytest.mark.parametrize("scale", [0.37, 1.0, 1.5, 2.0, 3.7])
@pytest.mark.parametrize("offset", [0.0, 0.4, 2.5])
def test_weights_are_normalised(scale, offset):
    w = axis_weights(40, 200, offset, scale).toarray()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-9)
    assert (w >= 0).all()


def test_integer_area_downsample_is_block_mean():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    out = resample_region(img, (0.0, 0.0), (3.0, 3.0), (20, 30))
    expected = img.reshape(20, 3, 30, 3, 3).astype(np.float64).mean((1, 3))
    np.testing.assert_array_equal(out, np.rint(expected).astype(np.uint8))


def test_fractional_area_weights_partial_pixels():
    # output pixel covers [0.5, 2.0): half of pixel 0 and all of pixel 1 -> (0.5*0 + 1*90)/1.5
    img = np.zeros((1, 3, 3), np.uint8)
    img[0, 1] = 90
    out = resample_region(img, (0.5, 0.0), (1.5, 1.0), (1, 1))
    assert out[0, 0, 0] == 60


def test_bilinear_enlarge_interpolates_and_keeps_constants():
    img = np.zeros((1, 2, 3), np.uint8)
    img[0, 1] = 200
    out = resample_region(img, (0.0, 0.0), (0.5, 1.0), (1, 4))
    # output centres at input 0.25, 0.75, 1.25, 1.75 -> positions -0.25, 0.25, 0.75, 1.25
    np.testing.assert_array_equal(out[0, :, 0], [0, 50, 150, 200])
    const = np.full((10, 10, 3), 77, np.uint8)
    assert (resample_region(const, (0.3, 1.7), (0.41, 0.77), (9, 11)) == 77).all()

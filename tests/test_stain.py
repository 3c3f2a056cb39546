"""Colour deconvolution: known OD values, round trips, pure-stain pixels."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_stnuc import stain


def test_od_of_known_intensities():
    rgb = np.array([[255, 255, 255], [1, 1, 1], [0, 25, 255]], np.uint8)
    od = stain.rgb_to_od(rgb)
    assert od.dtype == np.float32
    assert od[0] == pytest.approx([0.0, 0.0, 0.0])
    # -log10(1/255) = log10(255); 0 is clipped to 1 (finite)
    assert od[1] == pytest.approx([np.log10(255)] * 3, rel=1e-6)
    assert od[2] == pytest.approx([np.log10(255), -np.log10(25 / 255), 0.0], rel=1e-6)


def test_pure_hematoxylin_pixel_deconvolves_to_h_only():
    h_vec = stain.RUIFROK_HED[0]
    od = 0.8 * h_vec  # a pixel carrying OD 0.8 of hematoxylin only
    rgb = 255.0 * 10.0 ** (-od)
    hed = stain.rgb_to_hed(rgb[None, None, :])
    # rgb is float here (no rounding), so the decomposition is exact
    assert hed[0, 0] == pytest.approx([0.8, 0.0, 0.0], abs=1e-5)
    assert stain.hematoxylin_od(rgb[None, None, :])[0, 0] == pytest.approx(0.8, abs=1e-5)
    assert stain.eosin_od(rgb[None, None, :])[0, 0] == pytest.approx(0.0, abs=1e-5)


def test_eosin_pixel_and_white_background():
    od = 0.5 * stain.RUIFROK_HED[1]
    rgb = np.stack([255.0 * 10.0 ** (-od), np.full(3, 255.0)])
    assert stain.eosin_od(rgb) == pytest.approx([0.5, 0.0], abs=1e-5)
    assert stain.hematoxylin_od(rgb) == pytest.approx([0.0, 0.0], abs=1e-5)


def test_round_trip_and_shapes():
    rng = np.random.default_rng(0)
    rgb = rng.integers(1, 256, (7, 9, 3), dtype=np.uint8)
    hed = stain.rgb_to_hed(rgb)
    assert hed.shape == (7, 9, 3) and hed.dtype == np.float32
    assert np.abs(stain.hed_to_rgb(hed).astype(int) - rgb.astype(int)).max() <= 1
    assert stain.hematoxylin_od(rgb).shape == (7, 9)
    with pytest.raises(ValueError):
        stain.rgb_to_od(np.zeros((4, 4)))
    with pytest.raises(ValueError):
        stain.rgb_to_hed(rgb, stain_matrix=np.eye(2))


def test_hematoxylin_ranks_like_skimage():
    from skimage.color import rgb2hed

    rng = np.random.default_rng(1)
    rgb = rng.integers(20, 256, (32, 32, 3), dtype=np.uint8)
    ours = stain.rgb_to_hed(rgb)
    ref = rgb2hed(rgb)
    # skimage: ln(I/255) / ln(1e-6) @ inv(M), clipped at 0, rows not normalised (norms ~0.998-1.003)
    scaled = np.maximum(ours, 0) * np.log(10) / np.log(1e6)
    assert scaled == pytest.approx(ref, abs=0.01 * ref.max())

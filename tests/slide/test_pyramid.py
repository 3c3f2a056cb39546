"""Reads at any mpp come from the right level and match a downsampled level-0 read."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_stnuc.slide.registry import open_slide
from wsi_stnuc.slide.resample import resample_region

PYRAMID_MPP = 0.25  # the mpp the conftest pyramids are written with


def level0_then_resample(slide, x0, y0, w, h, mpp):
    """The reference: read level 0 covering the same area and area-resample it."""
    s = mpp / slide.mpp[0]
    ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
    raw = slide.read_level(0, ix0, iy0, int(np.ceil(w * s)) + 2, int(np.ceil(h * s)) + 2)
    return resample_region(raw, (x0 - ix0, y0 - iy0), (s, s), (h, w))


def test_best_level_choice(lossless_pyramid):
    with open_slide(lossless_pyramid) as slide:
        assert slide.level_downsamples == [1.0, 2.0, 4.0]
        pick = {
            m: slide.best_level(m / PYRAMID_MPP) for m in (0.25, 0.49, 0.5, 0.504, 0.99, 1.0, 9)
        }
        # 0.504 is within the 1 % tolerance of level 1's 0.5
        assert pick == {0.25: 0, 0.49: 0, 0.5: 1, 0.504: 1, 0.99: 1, 1.0: 2, 9: 2}


@pytest.mark.parametrize("mpp", [0.25, 0.5, 1.0, 2.0])
def test_lossless_levels_match_level0_exactly_on_grid(lossless_pyramid, mpp):
    with open_slide(lossless_pyramid) as slide:
        # origin on the level-2 grid and whole-pixel scales: a coarse level holds exactly the
        # area means the level-0 reference computes
        got = slide.read_region(208.0, 152.0, 160, 120, mpp=mpp).astype(int)
        ref = level0_then_resample(slide, 208.0, 152.0, 160, 120, mpp).astype(int)
    diff = np.abs(got - ref)
    # level k is a rounded 2x2 mean of level k-1: one rounding per level, plus the final one
    assert diff.max() <= 2 and diff.mean() < 0.6, (diff.max(), diff.mean())


@pytest.mark.parametrize("mpp", [0.25, 0.4, 0.5, 0.75, 1.0, 1.6])
def test_lossless_levels_match_level0_off_grid(lossless_pyramid, mpp):
    with open_slide(lossless_pyramid) as slide:
        got = slide.read_region(203.0, 150.5, 160, 120, mpp=mpp).astype(int)
        ref = level0_then_resample(slide, 203.0, 150.5, 160, 120, mpp).astype(int)
    # a coarse level cannot place a boundary inside one of its pixels; the error is bounded by
    # the texture's gradient over that pixel (this texture: a few levels), small on average
    diff = np.abs(got - ref)
    assert diff.mean() < 1.5 and diff.max() <= 12, (diff.max(), diff.mean())


@pytest.mark.realdata
@pytest.mark.parametrize("mpp", [0.499, 0.7, 1.0, 2.0, 3.0])
def test_real_jpeg_pyramid_matches_level0(cmu_mosaic, mpp):
    with open_slide(cmu_mosaic) as slide:
        assert slide.level_count == 3 and slide.dimensions == (4000, 3000)
        got = slide.read_region(1503.3, 801.0, 200, 150, mpp=mpp).astype(int)
        ref = level0_then_resample(slide, 1503.3, 801.0, 200, 150, mpp).astype(int)
        shifted = level0_then_resample(slide, 1503.3 + mpp / 0.499, 801.0, 200, 150, mpp)
    # coarse levels are re-encoded at JPEG q90 and cannot place sharp nuclear edges inside
    # one of their pixels: measured mean 2-3.3, p99 19-28 levels. A read misplaced by a single
    # output pixel gives mean 7-9, p99 66-106, so these bounds still catch any placement error.
    diff = np.abs(got - ref)
    assert diff.mean() < 4.5 and np.percentile(diff, 99) < 40, (
        diff.mean(),
        np.percentile(diff, 99),
    )
    off = np.abs(got - shifted.astype(int))
    assert off.mean() >= 4.5 or np.percentile(off, 99) >= 40


def test_anisotropic_pixels(tmp_path, synthetic_image):
    from wsi_stnuc.slide.write import write_pyramidal_tiff

    img = synthetic_image[:800, :1000]
    path = write_pyramidal_tiff(tmp_path / "aniso.tif", img, (0.5, 0.25), compression="zlib")
    with open_slide(path) as slide:
        assert slide.mpp == (0.5, 0.25)
        got = slide.read_region(10, 20, 50, 40, mpp=1.0)  # 2 px wide, 4 px tall per output px
    ref = resample_region(img, (10.0, 20.0), (2.0, 4.0), (40, 50))
    np.testing.assert_array_equal(got, ref)

"""Fixtures for slide tests: small synthetic pyramids (no real data needed) and CMU builds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from wsi_stnuc.slide.resample import resample_region
from wsi_stnuc.slide.write import write_pyramidal_tiff

PYRAMID_MPP = 0.25


def smooth_rgb(height: int, width: int, seed: int = 0, sigma: float = 6.0) -> np.ndarray:
    """Band-limited random colour texture: varied like tissue, smooth enough that JPEG and
    resampling errors stay small and comparable between paths."""
    rng = np.random.default_rng(seed)
    small = rng.normal(size=(height // 4 + 1, width // 4 + 1, 3)).astype(np.float32)
    small = ndi.gaussian_filter(small, (sigma / 4, sigma / 4, 0))
    small = (40 + 200 * (small - small.min()) / (np.ptp(small) + 1e-6)).astype(np.uint8)
    return resample_region(small, (0.0, 0.0), (0.25, 0.25), (height, width))


@pytest.fixture(scope="session")
def synthetic_image() -> np.ndarray:
    return smooth_rgb(1800, 2300)


@pytest.fixture(scope="session")
def lossless_pyramid(tmp_path_factory, synthetic_image) -> Path:
    """3-level zlib pyramid (2300 x 1800 -> 1150 -> 575), exact pixels at every level."""
    path = tmp_path_factory.mktemp("pyr") / "lossless.tif"
    return write_pyramidal_tiff(path, synthetic_image, PYRAMID_MPP, compression="zlib")


@pytest.fixture(scope="session")
def jpeg_pyramid(tmp_path_factory, synthetic_image) -> Path:
    path = tmp_path_factory.mktemp("pyr") / "jpeg.tif"
    return write_pyramidal_tiff(path, synthetic_image, PYRAMID_MPP, compression="jpeg")


@pytest.fixture(scope="session")
def cmu_mosaic(tmp_path_factory, cmu_slide) -> Path:
    """A 4k x 3k real-pixel JPEG pyramid (3 levels) mirror-tiled from the CMU slide."""
    from wsi_stnuc.slide.mosaic import mosaic_slide

    return mosaic_slide(cmu_slide, tmp_path_factory.mktemp("mosaic") / "m.tif", (4000, 3000))

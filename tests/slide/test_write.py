from __future__ import annotations

import numpy as np
import openslide
import tifffile

from wsi_stnuc.slide.write import write_pyramidal_tiff


def test_pyramid_levels_mpp_and_pixels(tmp_path):
    rng = np.random.default_rng(0)
    image = np.repeat(np.repeat(rng.integers(0, 255, (150, 105, 3), dtype=np.uint8), 20, 0), 20, 1)
    path = write_pyramidal_tiff(tmp_path / "s.tif", image, (0.5, 0.25), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(3000, 2100, 3), (1500, 1050, 3), (750, 525, 3)]
        np.testing.assert_array_equal(levels[0].asarray(), image)
        # each level is the 2x2 mean of the one above (lossless codec)
        expected = image.reshape(1500, 2, 1050, 2, 3).astype(np.float32).mean((1, 3)).round()
        np.testing.assert_array_equal(levels[1].asarray(), expected.astype(np.uint8))
    slide = openslide.OpenSlide(str(path))
    assert float(slide.properties["openslide.mpp-x"]) == 0.5
    assert float(slide.properties["openslide.mpp-y"]) == 0.25
    assert slide.level_downsamples == (1.0, 2.0, 4.0)


def test_rejects_non_rgb(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="s.tif"):
        write_pyramidal_tiff(tmp_path / "s.tif", np.zeros((10, 10), np.uint8), 0.5)
    assert not (tmp_path / "s.tif").exists()

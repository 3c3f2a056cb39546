from __future__ import annotations

import numpy as np
import pytest

from wsi_stnuc.slide.mosaic import mirror_index, mosaic_slide
from wsi_stnuc.slide.registry import open_slide


def test_mirror_index():
    np.testing.assert_array_equal(
        mirror_index(np.arange(-2, 9), 3), [1, 0, 0, 1, 2, 2, 1, 0, 0, 1, 2]
    )


@pytest.mark.realdata
def test_mosaic_repeats_source_mirrored(cmu_slide, tmp_path):
    out = mosaic_slide(cmu_slide, tmp_path / "m.tif", (2600, 1300), mpp=0.5, tile=256)
    with open_slide(out) as mosaic, open_slide(cmu_slide) as src:
        assert mosaic.dimensions == (2600, 1300) and mosaic.mpp == (0.5, 0.5)
        assert mosaic.level_count == 3  # 2600 -> 1300 -> 650
        a = mosaic.read_level(0, 0, 0, 2600, 1300).astype(int)
        b = src.read_level(0, 0, 0, 2220, 1300).astype(int)
    # JPEG q90 re-encoding of a q30 source: small mean error; a wrong tiling would be ~tens
    assert np.abs(a[:, :2220] - b).mean() < 4
    mirror_err = np.abs(a[:, 2220:] - b[:, 2220 - 380 :][:, ::-1]).mean()
    repeat_err = np.abs(a[:, 2220:] - b[:, :380]).mean()
    assert mirror_err < 4 and repeat_err > 2 * mirror_err, (mirror_err, repeat_err)


def test_mosaic_of_an_image_file_is_lossless_with_zlib(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "tile.png")
    with pytest.raises(ValueError, match="mpp"):
        mosaic_slide(tmp_path / "tile.png", tmp_path / "x.tif", 500)
    out = mosaic_slide(tmp_path / "tile.png", tmp_path / "m.tif", (500, 400), mpp=0.25,
                       compression="zlib")  # fmt: skip
    with open_slide(out) as slide:
        assert slide.dimensions == (500, 400) and slide.mpp == (0.25, 0.25)
        got = slide.read_level(0, 0, 0, 500, 400)
    assert np.array_equal(got[:300, :200], rgb)
    assert np.array_equal(got[300:400, :200], rgb[::-1][:100])  # mirrored repeat below
    assert np.array_equal(got[:300, 200:400], rgb[:, ::-1])

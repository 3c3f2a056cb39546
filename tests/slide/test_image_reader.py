"""Plain PNG/JPEG images (no pyramid) as slides: real MoNuSeg and CoNSeP files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsi_stnuc.errors import InputError
from wsi_stnuc.slide.image_reader import ImageReader
from wsi_stnuc.slide.registry import candidate_backends, open_slide


@pytest.fixture(scope="module")
def monuseg_png(data_dir):
    paths = sorted((data_dir / "nuclei" / "monuseg_train" / "images").glob("*.png"))
    if not paths:
        pytest.skip("no MoNuSeg PNG")
    return paths[0]


@pytest.fixture(scope="module")
def consep_jpg(data_dir):
    paths = sorted((data_dir / "nuclei" / "consep_train" / "images").glob("*.jpg"))
    if not paths:
        pytest.skip("no CoNSeP JPEG")
    return paths[0]


@pytest.mark.realdata
def test_real_png_and_jpeg_read_like_pil(monuseg_png, consep_jpg):
    for path, size in ((monuseg_png, (1000, 1000)), (consep_jpg, (256, 256))):
        assert candidate_backends(path) == ["image"]
        pixels = np.asarray(Image.open(path).convert("RGB"))
        with open_slide(path) as slide:
            assert isinstance(slide, ImageReader) and slide.dimensions == size
            assert slide.level_count == 1 and slide.native_mpp is None
            with pytest.raises(InputError, match="pass --mpp"):
                _ = slide.mpp
            assert (slide.read_region(10, 20, 64, 32) == pixels[20:52, 10:74]).all()
            edge = slide.read_region(size[0] - 8, 0, 16, 4)  # past the right edge: white
            assert (edge[:, 8:] == 255).all() and (edge[:, :8] == pixels[:4, -8:]).all()


@pytest.mark.realdata
def test_default_mpp_fills_in_only_where_missing(monuseg_png, tmp_path):
    with open_slide(monuseg_png, default_mpp=0.25) as slide:
        assert slide.mpp == (0.25, 0.25) and slide.mpp_source == "filled"
        assert slide.read_region(0, 0, 50, 50, mpp=0.5).shape == (50, 50, 3)
    with open_slide(monuseg_png, mpp=0.3, default_mpp=0.25) as slide:
        assert slide.mpp == (0.3, 0.3) and slide.mpp_source == "forced"
    # a PNG that states a microscope resolution keeps it; 72 dpi means "unknown"
    rgb = np.asarray(Image.open(monuseg_png).convert("RGB"))[:64, :64]
    stated, screen = tmp_path / "stated.png", tmp_path / "screen.png"
    Image.fromarray(rgb).save(stated, dpi=(25400 / 0.5, 25400 / 0.5))
    Image.fromarray(rgb).save(screen, dpi=(72, 72))
    with open_slide(stated, default_mpp=0.25) as slide:
        assert slide.mpp == pytest.approx((0.5, 0.5), rel=1e-3) and slide.mpp_source == "file"
    with open_slide(screen) as slide:
        assert slide.native_mpp is None


def test_not_an_image_is_an_input_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError, match="bad.png"):
        open_slide(bad)

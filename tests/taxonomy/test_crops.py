from __future__ import annotations

import numpy as np
import pytest

from wsi_stnuc.errors import InputError
from wsi_stnuc.taxonomy.crops import ArrayReader, crops_from_region, extract_crops


class CountingReader(ArrayReader):
    """ArrayReader that counts region reads (to check that crops are batched)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads = 0

    def read_region(self, *args, **kwargs):
        self.reads += 1
        return super().read_region(*args, **kwargs)


def _dots(shape, centres, radius=2):
    img = np.full((*shape, 3), 240, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for cx, cy in centres:
        img[(xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= radius**2] = (30, 20, 90)
    return img


def _dark_centre(crop):
    dark = crop[..., 0] < 128
    rows, cols = np.nonzero(dark)
    return cols.mean() + 0.5, rows.mean() + 0.5


@pytest.mark.parametrize("slide_mpp", [0.5, 0.25])
def test_crops_are_centred_on_known_dots(slide_mpp):
    centres = [(100.5, 80.5), (1300.5, 700.5), (1340.5, 730.5), (20.5, 1000.5)]
    reader = CountingReader(_dots((1100, 1400), centres, radius=6), slide_mpp)
    crops = extract_crops(reader, np.array(centres), mpp=0.5, size=32, tile_px=256)
    assert crops.shape == (4, 32, 32, 3) and crops.dtype == np.uint8
    for crop in crops:
        cx, cy = _dark_centre(crop)
        # the dot is centred to within one output pixel
        assert abs(cx - 16) <= 1.0 and abs(cy - 16) <= 1.0
    # the two neighbouring dots share one region read
    assert reader.reads == 3


def test_crops_outside_the_slide_are_white():
    reader = ArrayReader(_dots((64, 64), [(2.5, 2.5)], radius=1), 0.5)
    crop = extract_crops(reader, np.array([[2.5, 2.5]]), mpp=0.5, size=16)[0]
    assert np.all(crop[:5, :5] == 255)  # above/left of the image
    assert crop[7, 7, 0] < 128  # pixel (2, 2) covers [7, 8) x [7, 8) of the crop: centre is 8


def test_crops_from_region_gather_matches_slicing():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)
    out = crops_from_region(image, np.array([20.0, 30.4]), np.array([25.0, 12.6]), 8)
    assert np.array_equal(out[0], image[21:29, 16:24])
    assert np.array_equal(out[1], image[9:17, 26:34])


def test_bad_centroids_are_an_input_error():
    reader = ArrayReader(np.zeros((10, 10, 3), np.uint8), 0.5)
    with pytest.raises(InputError, match="N x 2"):
        extract_crops(reader, np.zeros((3, 3)))
    with pytest.raises(InputError, match="NaN"):
        extract_crops(reader, np.array([[np.nan, 1.0]]))


def test_empty_centroids_give_empty_crops():
    reader = ArrayReader(np.zeros((10, 10, 3), np.uint8), 0.5)
    assert extract_crops(reader, np.zeros((0, 2)), size=8).shape == (0, 8, 8, 3)


@pytest.mark.realdata
def test_crops_from_real_slide_file(cmu_slide):
    pytest.importorskip("wsi_stnuc.slide.registry")
    pts = np.array([[1000.0, 1500.0], [1010.0, 1490.0], [50.0, 60.0]])
    crops = extract_crops(cmu_slide, pts, mpp=0.5, size=32)
    assert crops.shape == (3, 32, 32, 3)
    # the slide is read at ~its own resolution (0.499 µm/px): the first two crops overlap
    # by a shift of about (10, -10) px
    assert np.abs(crops[0, 6:22, 16:26].astype(int) - crops[1, 16:, 6:16].astype(int)).mean() < 20

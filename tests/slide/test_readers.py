"""Every backend reports the same metadata and pixels for the same slide."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from wsi_stnuc.errors import InputError
from wsi_stnuc.slide.openslide_reader import OpenSlideReader
from wsi_stnuc.slide.registry import available_backends, candidate_backends, open_slide
from wsi_stnuc.slide.tifffile_reader import TifffileReader

# JPEG decoders may legally differ by a little per sample (IDCT rounding, chroma upsampling);
# both readers use libjpeg-turbo here, but a different build must still pass: at most 2 levels
# per sample and a mean far below 1 mean "same pixels", while any misplaced read differs by
# tens of levels on H&E texture.
JPEG_MAX_DIFF = 2
JPEG_MEAN_DIFF = 0.5

REGIONS = [
    (0, 0, 256, 256),
    (1000.0, 1500.0, 300, 200),
    (2100, 2900, 200, 150),  # reaches past the right and bottom edges
    (-40, -30, 100, 80),  # starts outside the slide
]


def assert_same_jpeg(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= JPEG_MAX_DIFF and diff.mean() <= JPEG_MEAN_DIFF, (diff.max(), diff.mean())


@pytest.mark.realdata
@pytest.mark.parametrize("reader_cls", [TifffileReader, OpenSlideReader])
def test_cmu_metadata(cmu_slide, reader_cls):
    with reader_cls(cmu_slide) as slide:
        assert slide.dimensions == (2220, 2967)
        assert slide.level_count == 1 and slide.level_downsamples == [1.0]
        assert slide.mpp == pytest.approx((0.499, 0.499))
        assert slide.vendor == "aperio"
        assert slide.objective_power == 20.0
        assert {"label", "macro", "thumbnail"} <= set(slide.associated_images)
        label = slide.read_associated("label")
        assert label.ndim == 3 and label.shape[2] == 3 and label.dtype == np.uint8
        with pytest.raises(InputError, match="no associated image"):
            slide.read_associated("nope")


@pytest.mark.realdata
def test_cmu_pixels_match_openslide(cmu_slide):
    with TifffileReader(cmu_slide) as tf, OpenSlideReader(cmu_slide) as osr:
        for x, y, w, h in REGIONS:
            assert_same_jpeg(tf.read_region(x, y, w, h), osr.read_region(x, y, w, h))
            assert_same_jpeg(tf.read_region(x, y, w, h, mpp=1.3), osr.read_region(x, y, w, h, 1.3))
        assert_same_jpeg(tf.thumbnail(300), osr.thumbnail(300))


@pytest.mark.realdata
def test_cmu_zarr_matches_openslide(cmu_slide, tmp_path):
    from wsi_stnuc.slide.convert import convert_to_ome_zarr

    out = convert_to_ome_zarr(cmu_slide, tmp_path / "cmu.zarr", progress=False)
    with open_slide(out) as z, OpenSlideReader(cmu_slide) as osr:
        assert z.backend == "zarr"
        assert z.dimensions == (2220, 2967) and z.mpp == pytest.approx((0.499, 0.499))
        for x, y, w, h in REGIONS:
            assert_same_jpeg(z.read_region(x, y, w, h), osr.read_region(x, y, w, h))


@pytest.mark.realdata
def test_registry_prefers_tifffile_and_can_force(cmu_slide):
    assert candidate_backends(cmu_slide)[0] == "tifffile"
    assert open_slide(cmu_slide).backend == "tifffile"
    assert open_slide(cmu_slide, backend="openslide").backend == "openslide"
    assert {"tifffile", "openslide", "zarr"} <= set(available_backends())


def test_outside_is_white_and_shape_exact(lossless_pyramid):
    with open_slide(lossless_pyramid) as slide:
        w, h = slide.dimensions
        assert (slide.read_region(w + 10, 0, 50, 40) == 255).all()
        part = slide.read_region(-10, -20, 30, 40)
        assert (part[:20] == 255).all() and (part[:, :10] == 255).all()
        assert not (part[20:, 10:] == 255).all()
        for mpp in (0.25, 0.31, 0.5, 0.77, 1.0, 3.3):
            assert slide.read_region(12.7, 33.1, 97, 61, mpp=mpp).shape == (61, 97, 3)


def test_mpp_override_and_missing_mpp(tmp_path, synthetic_image):
    path = tmp_path / "nompp.tif"
    tifffile.imwrite(path, synthetic_image[:300, :400], tile=(128, 128), photometric="rgb")
    with open_slide(path) as slide:
        with pytest.raises(InputError, match="pass --mpp"):
            _ = slide.mpp
        assert slide.read_region(0, 0, 10, 10).shape == (10, 10, 3)  # level-0 reads need no mpp
    with open_slide(path, mpp=0.5) as slide:
        assert slide.mpp == (0.5, 0.5)
    with open_slide(path, mpp=(0.5, 0.4)) as slide:
        assert slide.mpp == (0.5, 0.4)
    with pytest.raises(InputError, match="positive"):
        open_slide(path, mpp=-1)


def test_mpp_from_ome_units_and_resolution_tags(tmp_path, synthetic_image):
    img = synthetic_image[:256, :256]
    ome = tmp_path / "a.ome.tif"
    tifffile.imwrite(
        ome,
        img,
        photometric="rgb",
        metadata={
            "axes": "YXS",
            "PhysicalSizeX": 250,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 0.0003,
            "PhysicalSizeYUnit": "mm",
        },
    )
    with open_slide(ome) as slide:
        assert slide.vendor == "ome"
        assert slide.mpp == pytest.approx((0.25, 0.3))
    inch = tmp_path / "inch.tif"
    tifffile.imwrite(
        inch, img, photometric="rgb", resolution=(25400 / 0.5, 25400 / 0.5), resolutionunit="INCH"
    )
    with open_slide(inch) as slide:
        assert slide.mpp == pytest.approx((0.5, 0.5))
    cm = tmp_path / "cm.tif"
    tifffile.imwrite(
        cm,
        img,
        photometric="rgb",
        tile=(128, 128),
        resolution=(1e4 / 0.25, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
    )
    with open_slide(cm, backend="openslide") as slide:
        assert slide.mpp == pytest.approx((0.25, 0.5))


def test_openslide_and_tifffile_agree_on_pyramid(jpeg_pyramid):
    with TifffileReader(jpeg_pyramid) as tf, OpenSlideReader(jpeg_pyramid) as osr:
        assert (
            tf.level_dimensions == osr.level_dimensions == [(2300, 1800), (1150, 900), (575, 450)]
        )
        assert tf.level_downsamples == pytest.approx(osr.level_downsamples)
        for level in range(3):
            assert_same_jpeg(
                tf.read_level(level, 17, 9, 300, 200), osr.read_level(level, 17, 9, 300, 200)
            )
        for mpp in (0.25, 0.6, 1.0, 1.7):
            assert_same_jpeg(
                tf.read_region(101.5, 77, 128, 96, mpp), osr.read_region(101.5, 77, 128, 96, mpp)
            )


def test_tia_reader_matches_tifffile(jpeg_pyramid):
    pytest.importorskip("tiatoolbox")
    from wsi_stnuc.slide.tia_reader import TiaReader

    with TiaReader(jpeg_pyramid) as tia, TifffileReader(jpeg_pyramid) as tf:
        assert tia.dimensions == tf.dimensions
        assert tia.mpp == pytest.approx(tf.mpp)
        assert_same_jpeg(tia.read_region(64, 32, 200, 120), tf.read_region(64, 32, 200, 120))


def test_direct_tiles_equal_zarr_view(jpeg_pyramid):
    with TifffileReader(jpeg_pyramid) as slide:
        for level, (x, y, w, h) in enumerate(
            [(0, 0, 700, 300), (37, 251, 500, 400), (5, 7, 560, 440)]
        ):
            assert slide._direct[level] is not None
            via_zarr = np.asarray(slide._array(level)[y : y + h, x : x + w])
            np.testing.assert_array_equal(slide.read_level(level, x, y, w, h), via_zarr)


def test_striped_and_gray_tiffs_use_zarr_view(tmp_path, synthetic_image):
    img = synthetic_image[:300, :400]
    striped = tmp_path / "strips.tif"
    tifffile.imwrite(striped, img, photometric="rgb", compression="zlib", rowsperstrip=64)
    with open_slide(striped, mpp=0.5) as slide:
        assert slide._direct[0] is None
        np.testing.assert_array_equal(slide.read_level(0, 13, 17, 200, 150), img[17:167, 13:213])
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, img[..., 1], tile=(128, 128), compression="zlib")
    with open_slide(gray, mpp=0.5) as slide:
        out = slide.read_level(0, 100, 50, 64, 64)
        np.testing.assert_array_equal(out, np.repeat(img[50:114, 100:164, 1:2], 3, axis=2))


def test_ome_zarr_v3_layout_and_bare_array(tmp_path, synthetic_image):
    import zarr

    img = synthetic_image[:200, :300]
    path = tmp_path / "v3.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("s0", data=np.ascontiguousarray(img), chunks=(64, 64, 3))
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [
                    {"name": "y", "type": "space", "unit": "nanometer"},
                    {"name": "x", "type": "space", "unit": "nanometer"},
                    {"name": "c", "type": "channel"},
                ],
                "datasets": [
                    {
                        "path": "s0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [400.0, 250.0, 1.0]}
                        ],
                    }
                ],
            }
        ],
    }
    with open_slide(path) as slide:
        assert slide.dimensions == (300, 200) and slide.mpp == pytest.approx((0.25, 0.4))
        np.testing.assert_array_equal(slide.read_level(0, 5, 6, 70, 80), img[6:86, 5:75])
    bare = tmp_path / "bare.zarr"
    zarr.create_array(str(bare), data=np.ascontiguousarray(img), chunks=(64, 64, 3))
    with open_slide(bare, mpp=0.5) as slide:
        np.testing.assert_array_equal(slide.read_region(0, 0, 300, 200), img)


@pytest.mark.parametrize("reader_cls", [TifffileReader, OpenSlideReader])
def test_one_reader_shared_by_threads(jpeg_pyramid, reader_cls):
    from concurrent.futures import ThreadPoolExecutor

    origins = [(x, y) for x in range(0, 2000, 350) for y in range(0, 1500, 350)]
    with reader_cls(jpeg_pyramid) as slide:
        serial = [slide.read_region(x, y, 300, 300, mpp=0.3) for x, y in origins]
        with ThreadPoolExecutor(4) as pool:
            threaded = list(pool.map(lambda o: slide.read_region(*o, 300, 300, mpp=0.3), origins))
    for a, b in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.realdata
@pytest.mark.tia
def test_tia_reader_on_real_aperio_matches_openslide(cmu_slide):
    pytest.importorskip("tiatoolbox")
    from wsi_stnuc.slide.tia_reader import TiaReader

    with TiaReader(cmu_slide) as tia, OpenSlideReader(cmu_slide) as osr:
        assert tia.dimensions == (2220, 2967)
        assert tia.mpp == pytest.approx((0.499, 0.499))
        assert_same_jpeg(tia.read_region(300, 500, 256, 192), osr.read_region(300, 500, 256, 192))
        half = tia.read_region(300, 500, 128, 96, mpp=0.998)
        assert half.shape == (96, 128, 3)
        assert_same_jpeg(half, osr.read_region(300, 500, 128, 96, mpp=0.998))

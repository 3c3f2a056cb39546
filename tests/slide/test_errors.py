"""Bad input fails with an InputError that names the file."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from wsi_stnuc.errors import InputError
from wsi_stnuc.slide.registry import open_slide


def _raises_naming(path, **kwargs):
    with pytest.raises(InputError) as info:
        open_slide(path, **kwargs)
    assert str(path) in str(info.value)
    return str(info.value)


def test_missing_file(tmp_path):
    assert "not found" in _raises_naming(tmp_path / "nope.svs")


def test_unsupported_format(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    assert "unsupported" in _raises_naming(path)


def test_unknown_backend(tmp_path):
    path = tmp_path / "a.tif"
    path.write_bytes(b"x")
    assert "unknown backend" in _raises_naming(path, backend="pillow")


@pytest.mark.parametrize("name", ["garbage.svs", "garbage.tif", "garbage.ndpi"])
def test_corrupt_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert "cannot read slide" in _raises_naming(path)


def test_truncated_tiff(tmp_path, jpeg_pyramid):
    path = tmp_path / "cut.tif"
    data = jpeg_pyramid.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _raises_naming(path)
    # openslide-only readers must refuse it too, not return blank tiles
    _raises_naming(path, backend="tifffile")


@pytest.mark.realdata
def test_truncated_svs(tmp_path, cmu_slide):
    path = tmp_path / "cut.svs"
    data = cmu_slide.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.9)])
    _raises_naming(path)


def test_zero_size_level(tmp_path):
    path = tmp_path / "empty.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", shape=(3, 0, 10), dtype=np.uint8, chunks=(3, 16, 16))
    group.attrs["multiscales"] = [
        {"version": "0.4", "axes": ["c", "y", "x"], "datasets": [{"path": "0"}]}
    ]
    assert "zero size" in _raises_naming(path)


def test_zarr_without_multiscales(tmp_path):
    path = tmp_path / "plain.zarr"
    zarr.open_group(str(path), mode="w", zarr_format=2)
    assert "multiscales" in _raises_naming(path)


def test_directory_that_is_not_zarr(tmp_path):
    path = tmp_path / "folder"
    path.mkdir()
    (path / "x.txt").write_text("x")
    _raises_naming(path)
    shutil.rmtree(path)

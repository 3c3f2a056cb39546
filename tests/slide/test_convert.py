from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from wsi_stnuc.errors import InputError
from wsi_stnuc.slide.convert import convert_to_ome_zarr
from wsi_stnuc.slide.registry import open_slide


def test_convert_roundtrip_and_ngff_metadata(jpeg_pyramid, tmp_path):
    out = convert_to_ome_zarr(jpeg_pyramid, tmp_path / "s.zarr", chunk=256, progress=False)
    attrs = json.loads((out / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["axes"][2]["unit"] == "micrometer"
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [[1.0, 0.25 * 2**k, 0.25 * 2**k] for k in range(len(scales))]
    group = zarr.open_group(str(out), mode="r")
    assert group["0"].shape == (3, 1800, 2300) and group["0"].chunks == (3, 256, 256)
    assert [group[str(k)].shape[1:] for k in range(len(scales))] == [
        (1800, 2300),
        (900, 1150),
        (450, 575),
        (225, 287),
    ]
    with open_slide(out) as z, open_slide(jpeg_pyramid) as src:
        assert z.backend == "zarr" and z.mpp == (0.25, 0.25)
        np.testing.assert_array_equal(
            z.read_level(0, 0, 0, 2300, 1800), src.read_level(0, 0, 0, 2300, 1800)
        )
        # level 1 is the rounded 2x2 mean of level 0
        l0 = src.read_level(0, 0, 0, 2300, 1800).astype(np.float32)
        expected = np.rint(l0.reshape(900, 2, 1150, 2, 3).mean((1, 3)))
        np.testing.assert_array_equal(z.read_level(1, 0, 0, 1150, 900), expected.astype(np.uint8))
    with pytest.raises(InputError, match="already exists"):
        convert_to_ome_zarr(jpeg_pyramid, out, progress=False)


def test_convert_without_mpp_needs_override(tmp_path, synthetic_image):
    import tifffile

    src = tmp_path / "nompp.tif"
    tifffile.imwrite(src, synthetic_image[:300, :300], tile=(128, 128), photometric="rgb")
    out = convert_to_ome_zarr(src, tmp_path / "n.zarr", progress=False)
    with open_slide(out) as z, pytest.raises(InputError, match="pass --mpp"):
        _ = z.mpp
    with open_slide(src, mpp=0.5) as slide:
        out2 = convert_to_ome_zarr(slide, tmp_path / "m.zarr", progress=False)
    with open_slide(out2) as z:
        assert z.mpp == (0.5, 0.5)

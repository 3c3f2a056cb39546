"""Write pyramidal tiled TIFFs (level 0 + 2x downsampled levels) with mpp metadata.

The input may be a numpy array or any lazily sliceable array (dask, zarr): tiles are produced
one at a time, so a 40k x 40k slide is written with bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile

from wsi_stnuc.io_utils import atomic_path


def _tiles(level: da.Array, tile: int) -> Iterator[np.ndarray]:
    height, width = level.shape[:2]
    for y in range(0, height, tile):
        # one row of tiles at a time keeps memory at tile * width * 3 bytes
        row = np.asarray(level[y : y + tile].compute())
        for x in range(0, width, tile):
            block = row[:, x : x + tile]
            if block.shape[0] != tile or block.shape[1] != tile:
                padded = np.full((tile, tile, block.shape[2]), 255, dtype=np.uint8)
                padded[: block.shape[0], : block.shape[1]] = block
                block = padded
            yield block


def _downsample2(level: da.Array) -> da.Array:
    height, width = level.shape[:2]
    even = level[: height - height % 2, : width - width % 2]
    return (
        da.coarsen(np.mean, even.astype(np.float32), {0: 2, 1: 2}, trim_excess=True)
        .round()
        .astype(np.uint8)
    )


def write_pyramidal_tiff(
    path: str | Path,
    image,
    mpp: float | tuple[float, float],
    *,
    tile: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
    min_level_size: int = 512,
    description: str | None = None,
) -> Path:
    """Write ``image`` (H x W x 3 uint8) as a tiled pyramidal TIFF, each level its own page.

    Levels are 2x downsampled until the longer side is below ``min_level_size``. ``mpp``
    (µm/px, x and y) goes into the TIFF resolution tags (pixels per cm), which OpenSlide,
    tifffile and QuPath read. The file is written to a temporary name and renamed, so a crash
    never leaves a truncated file that looks complete.
    """
    path = Path(path)
    mpp_x, mpp_y = (mpp, mpp) if np.isscalar(mpp) else mpp
    if len(image.shape) != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"{path}: expected an H x W x 3 uint8 image, got {image.shape} {image.dtype}"
        )
    level = (
        image
        if isinstance(image, da.Array)
        else da.from_array(image, chunks=(tile * 4, tile * 4, -1))
    )
    levels = [level]
    while max(levels[-1].shape[:2]) >= 2 * min_level_size:
        levels.append(_downsample2(levels[-1]))
    codec_args = {"level": quality} if compression == "jpeg" else {}
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for i, lev in enumerate(levels):
            factor = 2**i
            tif.write(
                _tiles(lev, tile),
                shape=lev.shape,
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                compressionargs=codec_args,
                resolution=(1e4 / (mpp_x * factor), 1e4 / (mpp_y * factor)),
                resolutionunit="CENTIMETER",
                subfiletype=0 if i == 0 else 1,
                description=description if i == 0 else None,
                metadata=None,
            )
    return path

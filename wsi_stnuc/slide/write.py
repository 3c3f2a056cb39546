"""Write pyramidal tiled TIFFs (level 0 + 2x downsampled levels) with mpp metadata.

The input may be a numpy array or any lazily sliceable array (dask, zarr). Level 0 is pulled
one row of tiles at a time; while a level is written, each row of tiles is also 2x2-averaged
into a temporary memory-mapped file that feeds the next level. So every input pixel is computed
once, memory stays at one row of tiles, and temporary disk is a third of the raw level-0 size.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from wsi_stnuc.io_utils import atomic_path


def _rows(level, tile: int) -> Iterator[np.ndarray]:
    """Blocks of ``tile`` rows (the last may be shorter), computed if lazy."""
    for y in range(0, level.shape[0], tile):
        block = level[y : y + tile]
        yield np.asarray(block.compute() if hasattr(block, "compute") else block)


def _halve_rows(block: np.ndarray) -> np.ndarray:
    """2x2 mean rounded half to even (as ``np.round``), dropping an odd last row/column."""
    h, w = block.shape[0] // 2 * 2, block.shape[1] // 2 * 2
    b = block[:h, :w].astype(np.uint16)
    total = b[0::2, 0::2] + b[0::2, 1::2] + b[1::2, 0::2] + b[1::2, 1::2]
    # integer form of round(total / 4): up past .5, and at exactly .5 up only from odd
    quotient, rest = total >> 2, total & 3
    return (quotient + (rest > 2) + ((rest == 2) & (quotient & 1))).astype(np.uint8)


def _tiles(
    rows: Iterator[np.ndarray], tile: int, next_level: np.ndarray | None
) -> Iterator[np.ndarray]:
    """Tiles in row-major order, padded white at the edges; also fills ``next_level``."""
    y = 0
    for row in rows:
        if next_level is not None:
            half = _halve_rows(row)
            next_level[y // 2 : y // 2 + half.shape[0]] = half[:, : next_level.shape[1]]
        y += row.shape[0]
        for x in range(0, row.shape[1], tile):
            block = row[:, x : x + tile]
            if block.shape[0] != tile or block.shape[1] != tile:
                padded = np.full((tile, tile, block.shape[2]), 255, dtype=np.uint8)
                padded[: block.shape[0], : block.shape[1]] = block
                block = padded
            yield block


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
    shape = tuple(image.shape)
    if len(shape) != 3 or shape[2] != 3 or np.dtype(image.dtype) != np.uint8:
        raise ValueError(f"{path}: expected an H x W x 3 uint8 image, got {shape} {image.dtype}")
    if tile % 2:
        raise ValueError(f"{path}: tile size must be even, got {tile}")
    shapes = [shape]
    while max(shapes[-1][:2]) >= 2 * min_level_size:
        h, w = shapes[-1][:2]
        shapes.append((h // 2, w // 2, 3))
    codec_args = {"level": quality} if compression == "jpeg" else {}
    with (
        atomic_path(path) as tmp,
        tempfile.TemporaryDirectory(dir=path.parent, prefix=".pyramid-") as scratch,
        tifffile.TiffWriter(tmp, bigtiff=True) as tif,
    ):
        rows = _rows(image, tile)
        for i, level_shape in enumerate(shapes):
            next_level = None
            if i + 1 < len(shapes):
                next_level = np.lib.format.open_memmap(
                    Path(scratch) / f"level{i + 1}.npy",
                    mode="w+",
                    dtype=np.uint8,
                    shape=shapes[i + 1],
                )
            factor = 2**i
            tif.write(
                _tiles(rows, tile, next_level),
                shape=level_shape,
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
            if next_level is not None:
                next_level.flush()
                rows = _rows(next_level, tile)
    return path

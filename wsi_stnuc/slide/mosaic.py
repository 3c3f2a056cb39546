"""Build big real-pixel test slides by mirror-tiling a small real slide (or image) into a pyramid.

The mosaic repeats the source's level-0 pixels, mirrored at every repeat so tissue continues
across the joins (no artificial straight edges for tissue detection or seam tests). It is
computed block by block with Dask and written with :func:`write_pyramidal_tiff`, so a 40k x
40k slide is built with bounded memory.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np

from wsi_stnuc.slide.registry import open_slide
from wsi_stnuc.slide.write import write_pyramidal_tiff

# the source is held in memory once; larger sources contribute their top-left corner only
MAX_SOURCE_SIDE = 4096
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def mirror_index(index: np.ndarray, period: int) -> np.ndarray:
    """Map integer positions onto ``0..period-1`` by reflecting at every repeat."""
    folded = np.mod(index, 2 * period)
    return np.where(folded < period, folded, 2 * period - 1 - folded)


def mosaic_slide(
    src: str | Path,
    out_path: str | Path,
    size: int | tuple[int, int],
    *,
    mpp: float | None = None,
    tile: int = 256,
    quality: int = 90,
    compression: str = "jpeg",
) -> Path:
    """Write a pyramidal TIFF (``compression`` ``"jpeg"`` or ``"zlib"``) of ``size`` (side,
    or (width, height)) level-0 pixels.

    Pixels are the source's level 0 mirror-tiled. ``src`` is a slide, or a plain RGB image
    file (PNG/JPEG: an annotated tile), which then needs ``mpp``; for a slide ``mpp``
    defaults to its (x) mpp. Returns ``out_path``.
    """
    width, height = (size, size) if np.isscalar(size) else size
    if Path(src).suffix.lower() in IMAGE_SUFFIXES:
        if mpp is None:
            raise ValueError(f"{src}: an image file carries no µm/px; pass mpp")
        from PIL import Image

        rgb = np.asarray(Image.open(src).convert("RGB"))[:MAX_SOURCE_SIDE, :MAX_SOURCE_SIDE]
        sh, sw = rgb.shape[:2]
    else:
        with open_slide(src) as slide:
            sw, sh = (min(v, MAX_SOURCE_SIDE) for v in slide.dimensions)
            rgb = slide.read_level(0, 0, 0, sw, sh)
            mpp = float(mpp) if mpp is not None else slide.mpp[0]
    # RGB packed into one uint32 per pixel: np.take then moves 4-byte words, ~10x faster than
    # fancy-indexing three separate bytes
    packed = np.concatenate([rgb, np.zeros((sh, sw, 1), np.uint8)], axis=2).view(np.uint32)[..., 0]

    def block(block_info=None) -> np.ndarray:
        (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
        rows = np.take(packed, mirror_index(np.arange(y0, y1), sh), axis=0)
        pixels = np.take(rows, mirror_index(np.arange(x0, x1), sw), axis=1)
        return pixels[..., None].view(np.uint8)[..., :3]

    # one chunk per row of TIFF tiles: the writer pulls exactly one such row at a time
    chunks = ((tile,) * (height // tile) + ((height % tile,) if height % tile else ()),)
    chunks += ((width,), (3,))
    image = da.map_blocks(block, chunks=chunks, dtype=np.uint8)
    return write_pyramidal_tiff(
        out_path, image, mpp, tile=tile, quality=quality, compression=compression
    )

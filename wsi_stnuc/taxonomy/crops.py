"""Nucleus-centred image crops from a slide, read in a few large regions instead of one per cell.

Nuclei cluster in tissue, so centroids are grouped by a grid of ``tile_px`` output pixels and
each group is served by one ``read_region`` call that covers the tile plus half a crop of
margin; the crops are then sliced out of that region with one fancy-indexing step. A slide of
a million nuclei costs a few thousand region reads, not a million.

Crop convention: the crop of a centroid ``(cx, cy)`` (level-0 px) is ``size x size`` pixels at
``mpp`` whose centre is the output pixel grid point nearest to the centroid, i.e. the centroid
lies within half an output pixel of the crop centre ``(size / 2, size / 2)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from wsi_stnuc.errors import InputError


class RegionReader(Protocol):
    """What crops need of a slide: ``wsi_stnuc.slide.base.SlideReader`` satisfies it."""

    @property
    def mpp(self) -> tuple[float, float]: ...

    def read_region(
        self, x0: float, y0: float, width: int, height: int, mpp: float | None = None
    ) -> np.ndarray: ...


SlideLike = str | Path | RegionReader


@dataclass(frozen=True)
class RegionGroup:
    """One region read and the centroids it serves.

    ``index`` are positions into the caller's centroid array; ``u``, ``v`` are those centroids
    in the region's output pixels (float); ``x0``, ``y0`` the region's level-0 origin and
    ``sx``, ``sy`` level-0 px per output px.
    """

    index: np.ndarray
    image: np.ndarray
    u: np.ndarray
    v: np.ndarray
    x0: float
    y0: float
    sx: float
    sy: float


class ArrayReader:
    """An in-memory RGB image served through the reader protocol (tests, annotated patches).

    Follows the slide coordinate contract: output pixel ``(i, j)`` at ``mpp`` covers level-0
    ``[x0 + j*sx, x0 + (j+1)*sx)``; it is sampled bilinearly at its centre (exact copy when
    ``sx = sy = 1`` on integer origins); outside the image is white.
    """

    def __init__(self, image: np.ndarray, mpp: float | tuple[float, float], path: str = "<array>"):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(
                path, f"image must be H x W x 3 uint8, got {image.shape} {image.dtype}"
            )
        self.image = image
        self._mpp = (float(mpp), float(mpp)) if np.isscalar(mpp) else tuple(map(float, mpp))
        self.path = path

    @property
    def mpp(self) -> tuple[float, float]:
        return self._mpp  # type: ignore[return-value]

    def read_region(
        self, x0: float, y0: float, width: int, height: int, mpp: float | None = None
    ) -> np.ndarray:
        sx, sy = (1.0, 1.0) if mpp is None else (mpp / self._mpp[0], mpp / self._mpp[1])
        h, w = self.image.shape[:2]
        if sx == 1.0 and sy == 1.0 and float(x0).is_integer() and float(y0).is_integer():
            out = np.full((height, width, 3), 255, np.uint8)
            xa, ya = max(int(x0), 0), max(int(y0), 0)
            xb, yb = min(int(x0) + width, w), min(int(y0) + height, h)
            if xb > xa and yb > ya:
                out[ya - int(y0) : yb - int(y0), xa - int(x0) : xb - int(x0)] = self.image[
                    ya:yb, xa:xb
                ]
            return out
        from scipy.ndimage import map_coordinates

        # level-0 index coordinates of output pixel centres (pixel k's centre is at k + 0.5)
        ys = y0 + (np.arange(height) + 0.5) * sy - 0.5
        xs = x0 + (np.arange(width) + 0.5) * sx - 0.5
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        planes = [
            map_coordinates(
                self.image[..., c].astype(np.float32),
                [yy, xx],
                order=1,
                cval=255.0,
                mode="constant",
            )
            for c in range(3)
        ]
        return np.clip(np.rint(np.stack(planes, axis=-1)), 0, 255).astype(np.uint8)


def open_reader(slide: SlideLike) -> tuple[RegionReader, bool]:
    """A reader for ``slide`` and whether the caller opened it (and so must close it)."""
    if isinstance(slide, (str, Path)):
        from wsi_stnuc.slide.registry import open_slide

        return open_slide(slide), True
    return slide, False


def _check_centroids(slide: SlideLike, centroids: np.ndarray) -> np.ndarray:
    pts = np.asarray(centroids, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InputError(_name(slide), f"centroids must be N x 2 (x, y), got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise InputError(_name(slide), "centroids contain NaN or infinite values")
    return pts


def _name(slide: SlideLike) -> str:
    return str(getattr(slide, "path", slide))


def iter_region_groups(
    reader: RegionReader,
    centroids_level0: np.ndarray,
    *,
    mpp: float,
    margin_px: int,
    tile_px: int = 512,
) -> Iterator[RegionGroup]:
    """Group centroids by a ``tile_px`` grid (output px at ``mpp``) and read one region per tile.

    Each region covers its tile plus ``margin_px`` output pixels on every side, so any window
    of half-width ``margin_px`` around a centroid of the tile lies inside the region. Regions
    start on integer level-0 coordinates so that unscaled reads need no resampling.
    """
    pts = np.asarray(centroids_level0, dtype=np.float64)
    if len(pts) == 0:
        return
    mpp_x, mpp_y = reader.mpp
    sx, sy = mpp / mpp_x, mpp / mpp_y
    tiles = np.floor(pts / [tile_px * sx, tile_px * sy]).astype(np.int64)
    keys, inverse = np.unique(tiles, axis=0, return_inverse=True)
    order = np.argsort(inverse.ravel(), kind="stable")
    bounds = np.searchsorted(inverse.ravel()[order], np.arange(len(keys) + 1))
    side = tile_px + 2 * margin_px + 2
    for k, (tx, ty) in enumerate(keys):
        idx = order[bounds[k] : bounds[k + 1]]
        x0 = math.floor(tx * tile_px * sx - (margin_px + 1) * sx)
        y0 = math.floor(ty * tile_px * sy - (margin_px + 1) * sy)
        image = np.asarray(reader.read_region(x0, y0, side, side, mpp))
        u = (pts[idx, 0] - x0) / sx
        v = (pts[idx, 1] - y0) / sy
        yield RegionGroup(idx, image, u, v, float(x0), float(y0), sx, sy)


def crops_from_region(image: np.ndarray, u: np.ndarray, v: np.ndarray, size: int) -> np.ndarray:
    """``size x size`` crops of ``image`` centred on output-pixel points ``(u, v)``.

    Vectorised: one gather for all points. Parts outside ``image`` are white.
    """
    # floor(x + 0.5), not rint: rint rounds halves to even, which would shift crops of
    # pixel-centred centroids left or right depending on parity
    c0 = np.floor(u - size / 2 + 0.5).astype(np.int64)
    r0 = np.floor(v - size / 2 + 0.5).astype(np.int64)
    offs = np.arange(size)
    rows = r0[:, None] + offs[None, :]
    cols = c0[:, None] + offs[None, :]
    h, w = image.shape[:2]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    out = image[np.clip(rows, 0, h - 1)[:, :, None], np.clip(cols, 0, w - 1)[:, None, :]]
    out[~inside] = 255
    return out


def extract_crops(
    slide: SlideLike,
    centroids_level0: np.ndarray,
    *,
    mpp: float = 0.5,
    size: int = 32,
    tile_px: int = 512,
    progress: bool = False,
) -> np.ndarray:
    """Nucleus-centred RGB crops: ``N x size x size x 3`` uint8, in the order of the centroids.

    ``slide`` is a path (opened with ``wsi_stnuc.slide.registry.open_slide``) or an open reader.
    ``centroids_level0`` is ``N x 2`` (x, y) in level-0 pixels; ``mpp`` the crop resolution.
    """
    if size <= 0 or mpp <= 0:
        raise InputError(
            _name(slide), f"crop size and mpp must be positive (size={size}, mpp={mpp})"
        )
    pts = _check_centroids(slide, centroids_level0)
    out = np.full((len(pts), size, size, 3), 255, dtype=np.uint8)
    reader, owned = open_reader(slide)
    try:
        groups = iter_region_groups(reader, pts, mpp=mpp, margin_px=size // 2 + 1, tile_px=tile_px)
        if progress:
            from tqdm import tqdm

            groups = tqdm(groups, desc="crops", unit="region", disable=None)  # TTY only
        for g in groups:
            out[g.index] = crops_from_region(g.image, g.u, g.v, size)
    finally:
        if owned:
            close = getattr(reader, "close", None)
            if close is not None:
                close()
    return out

"""tifffile backend: TIFF, SVS and OME-TIFF pyramids.

Tiled, chunky (RGB-interleaved) levels are read tile by tile straight from the file: ``os.pread``
(no shared file position, so no lock) plus tifffile's own decoder for the page (JPEG, JPEG
2000, LZW, deflate ... with Aperio/JPEG tables handled), which releases the GIL, so concurrent
reads of one slide decode in parallel. Any other layout (strips, planar, multi-page levels)
goes through tifffile's zarr view, ``series[0].aszarr(level=k)`` opened with zarr. The direct
path exists because zarr-python 3's async pipeline costs 2-4x the JPEG decode per tile
(measured in benchmarks/bench_slide_read.py); both paths return the same pixels (tested).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from wsi_stnuc.errors import InputError
from wsi_stnuc.slide.base import MppLike, SlideReader, check_levels
from wsi_stnuc.slide.metadata import (
    aperio_mpp,
    mpp_from_resolution,
    ome_mpp,
    parse_aperio_description,
    parse_magnification,
    parse_ome_pixels,
)

# threads tifffile may use to decode the tiles of one zarr request
DECODE_WORKERS = 4


def _to_rgb(block: np.ndarray, axes: str) -> np.ndarray:
    """Bring a level's block to H x W x 3 uint8 from axes YXS, SYX/CYX or YX."""
    if axes in ("SYX", "CYX"):
        block = np.moveaxis(block, 0, -1)
    elif axes == "YX":
        block = np.repeat(block[..., None], 3, axis=2)
    if block.shape[2] == 4:
        block = block[..., :3]  # alpha of a scanned image carries nothing
    if block.dtype == np.uint16:
        block = (block // 257).astype(np.uint8)
    return np.ascontiguousarray(block, dtype=np.uint8)


class TifffileReader(SlideReader):
    """A pyramidal TIFF/SVS/OME-TIFF read through tifffile (direct tiles or its zarr view)."""

    backend = "tifffile"

    def __init__(self, path: str | Path, mpp: MppLike = None) -> None:
        super().__init__(path, mpp)
        import tifffile

        try:
            self._tif = tifffile.TiffFile(str(self.path))
            series = self._tif.series[0]
            levels = list(series.levels)
        except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as exc:
            raise InputError(self.path, f"tifffile cannot open this file ({exc})") from exc
        self._axes = series.axes.upper()
        if self._axes not in ("YXS", "SYX", "CYX", "YX"):
            self._tif.close()
            raise InputError(self.path, f"unsupported image axes {series.axes!r} (need 2D RGB)")
        channel_axis = {"YXS": 2, "SYX": 0, "CYX": 0}.get(self._axes)
        channels = 1 if channel_axis is None else series.shape[channel_axis]
        if channels not in (1, 3, 4) or series.dtype not in (np.uint8, np.uint16):
            self._tif.close()
            raise InputError(
                self.path, f"unsupported pixels: {channels} channels of {series.dtype} (need RGB)"
            )
        yx = (self._axes.index("Y"), self._axes.index("X"))
        self._dims = check_levels(self.path, [(lv.shape[yx[1]], lv.shape[yx[0]]) for lv in levels])
        self._check_not_truncated(levels)
        self._series = series
        self._arrays: dict[int, object] = {}
        self._fd = os.open(self.path, os.O_RDONLY) if hasattr(os, "pread") else None
        # per level: the page to decode tiles of directly, or None for the zarr view
        self._direct = [_direct_page(level, self._axes) for level in levels]
        self._page0 = series.keyframe
        self._aperio = parse_aperio_description(self._page0.description) if self._tif.is_svs else {}
        self._ome = parse_ome_pixels(self._tif.ome_metadata) if self._tif.is_ome else {}

    def _check_not_truncated(self, levels) -> None:
        """A file cut short would decode as missing tiles; refuse it up front instead."""
        size = os.path.getsize(self.path)
        # the IFD chain must end with a zero "next IFD" offset inside the file; tifffile only
        # logs a chain that runs past the end, which is how a cut-off file shows up
        tiff, pages = self._tif.tiff, self._tif.pages
        position = pages.next_page_offset
        fh = self._tif.filehandle
        raw = b""
        if position is not None and position + tiff.offsetsize <= size:
            fh.seek(position)
            raw = fh.read(tiff.offsetsize)
        if len(raw) != tiff.offsetsize or struct.unpack(tiff.offsetformat, raw)[0] != 0:
            self._tif.close()
            raise InputError(
                self.path, "file is truncated: its list of image directories is cut off"
            )
        for k, level in enumerate(levels):
            for page in level.pages:
                if page is None:
                    continue
                ends = np.asarray(page.dataoffsets, np.int64) + np.asarray(page.databytecounts)
                if ends.size and int(ends.max()) > size:
                    self._tif.close()
                    raise InputError(
                        self.path, f"file is truncated: level {k} tile data runs past end of file"
                    )

    def _array(self, level: int):
        arr = self._arrays.get(level)
        if arr is None:
            import zarr

            store = self._series.aszarr(level=level, maxworkers=DECODE_WORKERS)
            arr = self._arrays.setdefault(level, zarr.open_array(store, mode="r"))
        return arr

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return self._dims

    @property
    def properties(self) -> dict[str, str]:
        props = {f"aperio.{k}": v for k, v in self._aperio.items()}
        props.update({f"ome.{k}": v for k, v in self._ome.items()})
        for name in ("ImageDescription", "Software", "Make", "Model", "DateTime"):
            tag = self._page0.tags.get(name)
            if tag is not None:
                props[f"tiff.{name}"] = str(tag.value)
        props["tifffile.series"] = ",".join(s.name or "" for s in self._tif.series)
        return props

    @property
    def vendor(self) -> str | None:
        if self._tif.is_svs:
            return "aperio"
        if self._tif.is_ome:
            return "ome"
        return "generic-tiff"

    @property
    def objective_power(self) -> float | None:
        return parse_magnification(
            self._aperio.get("AppMag") or self._ome.get("NominalMagnification")
        )

    def _associated_series(self) -> dict[str, object]:
        found = {}
        for series in self._tif.series[1:]:
            name = (series.name or "").strip().lower()
            if name and series.axes.upper() in ("YXS", "YX") and name not in found:
                found[name] = series
        return found

    @property
    def associated_images(self) -> list[str]:
        return sorted(self._associated_series())

    def read_associated(self, name: str) -> np.ndarray:
        series = self._associated_series().get(name)
        if series is None:
            return super().read_associated(name)
        return _to_rgb(series.asarray(), series.axes.upper())

    def _native_mpp(self) -> tuple[float, float] | None:
        found = aperio_mpp(self._aperio) or ome_mpp(self._ome)
        if found:
            return found
        tags = self._page0.tags
        unit = tags.get("ResolutionUnit")
        return mpp_from_resolution(
            tags["XResolution"].value if "XResolution" in tags else None,
            tags["YResolution"].value if "YResolution" in tags else None,
            None if unit is None else int(unit.value),
        )

    def _read_level_raw(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        page = self._direct[level]
        if page is not None and self._fd is not None:
            try:
                block = _read_tiles(self._fd, page, x, y, width, height)
            except Exception as exc:  # codec errors come as many types; all mean a corrupt tile
                raise InputError(self.path, f"cannot decode level {level} tiles ({exc})") from exc
            return _to_rgb(block, self._axes)
        arr = self._array(level)
        ys, xs = slice(y, y + height), slice(x, x + width)
        index = {"YXS": (ys, xs), "YX": (ys, xs)}.get(self._axes, (slice(None), ys, xs))
        try:
            block = np.asarray(arr[index])
        except Exception as exc:  # codec errors come as many types; all mean a corrupt tile
            raise InputError(self.path, f"cannot decode level {level} tiles ({exc})") from exc
        return _to_rgb(block, self._axes)

    def close(self) -> None:
        self._arrays.clear()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._tif.close()


def _direct_page(level, axes: str):
    """The level's single tiled, interleaved page, if it can be decoded tile by tile."""
    if axes not in ("YXS", "YX") or len(level.pages) != 1:
        return None
    page = level.pages[0]
    if page is None or not page.is_tiled or page.planarconfig != 1 or page.imagedepth != 1:
        return None
    return page


def _read_tiles(fd: int, page, x: int, y: int, width: int, height: int) -> np.ndarray:
    """Decode the tiles of ``page`` that cover the region and copy their overlap out."""
    tw, tl = page.tilewidth, page.tilelength
    per_row = -(-page.imagewidth // tw)
    samples = page.samplesperpixel
    out = np.empty((height, width, samples), dtype=page.dtype)
    decodeargs = {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader, "_fullsize": True}
    for row in range(y // tl, (y + height - 1) // tl + 1):
        for col in range(x // tw, (x + width - 1) // tw + 1):
            index = row * per_row + col
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            if count == 0:  # tile never written: TIFF's convention is "fill"; ours is white
                tile = np.full((tl, tw, samples), np.iinfo(page.dtype).max, page.dtype)
            else:
                data = os.pread(fd, count, offset)
                if len(data) != count:
                    raise OSError(f"tile {index} is cut off at the end of the file")
                tile = page.decode(data, index, **decodeargs)[0].reshape(tl, tw, samples)
            ty0, tx0 = row * tl, col * tw
            ys0, ys1 = max(y, ty0), min(y + height, ty0 + tl)
            xs0, xs1 = max(x, tx0), min(x + width, tx0 + tw)
            out[ys0 - y : ys1 - y, xs0 - x : xs1 - x] = tile[
                ys0 - ty0 : ys1 - ty0, xs0 - tx0 : xs1 - tx0
            ]
    return out[..., 0] if page.samplesperpixel == 1 and out.ndim == 3 else out

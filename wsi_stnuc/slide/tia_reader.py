"""tiatoolbox backend (optional): whatever ``tiatoolbox.wsicore.WSIReader.open`` can read.

tiatoolbox is a heavy optional dependency, imported only when this backend is used. Its
readers take level-0 locations and output sizes per level, as OpenSlide does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsi_stnuc.errors import InputError
from wsi_stnuc.slide.base import MppLike, SlideReader, check_levels
from wsi_stnuc.slide.metadata import parse_float


class TiaReader(SlideReader):
    """A slide read through tiatoolbox's ``WSIReader``."""

    backend = "tiatoolbox"

    def __init__(self, path: str | Path, mpp: MppLike = None) -> None:
        super().__init__(path, mpp)
        from tiatoolbox.wsicore.wsireader import WSIReader

        from wsi_stnuc.slide.registry import TIFF_SUFFIXES
        from wsi_stnuc.slide.tifffile_reader import TifffileReader

        if self.path.name.lower().endswith(TIFF_SUFFIXES):
            # tiatoolbox opens a cut-off TIFF and serves blank tiles from it: refuse such a file
            # with the tifffile backend's integrity check (InputError naming what is cut off).
            TifffileReader(self.path, mpp=mpp).close()

        try:
            self._reader = WSIReader.open(str(self.path))
            self._info = self._reader.info
        except Exception as exc:  # tiatoolbox wraps each backend's own error types
            raise InputError(self.path, f"tiatoolbox cannot open this file ({exc})") from exc
        self._dims = check_levels(self.path, [tuple(d) for d in self._info.level_dimensions])
        self._downsamples = [float(d) for d in self._info.level_downsamples]

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return self._dims

    @property
    def properties(self) -> dict[str, str]:
        raw = getattr(self._info, "raw", None) or {}
        return {str(k): str(v) for k, v in dict(raw).items()}

    @property
    def vendor(self) -> str | None:
        return self._info.vendor

    @property
    def objective_power(self) -> float | None:
        return parse_float(self._info.objective_power)

    def _native_mpp(self) -> tuple[float, float] | None:
        mpp = self._info.mpp
        if mpp is None:
            return None
        mx, my = (parse_float(v) for v in np.ravel(mpp)[:2])
        return (mx, my) if mx and my and mx > 0 and my > 0 else None

    def _read_level_raw(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        ds = self._downsamples[level]
        try:
            region = self._reader.read_rect(
                (round(x * ds), round(y * ds)), (width, height), resolution=level, units="level"
            )
        except Exception as exc:  # decoder errors of the wrapped backend
            raise InputError(self.path, f"cannot read level {level} ({exc})") from exc
        region = np.asarray(region)
        if region.ndim == 2:
            region = np.repeat(region[..., None], 3, axis=2)
        return np.ascontiguousarray(region[..., :3], dtype=np.uint8)

    def close(self) -> None:
        close = getattr(self._reader, "close", None)
        if close is not None:
            close()

"""OpenSlide backend: every vendor format OpenSlide knows (.svs .ndpi .mrxs .scn .vms .bif ...).

OpenSlide handles are thread-safe, so one reader serves all threads of a process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsi_stnuc.errors import InputError
from wsi_stnuc.formats import Slide
from wsi_stnuc.slide.base import MppLike, SlideReader, check_levels
from wsi_stnuc.slide.metadata import mpp_from_resolution, parse_float


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite RGBA over white (transparent = no scanned tissue = background)."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.float32) / 255.0
    return np.rint(rgb * a + 255.0 * (1.0 - a)).astype(np.uint8)


class OpenSlideReader(SlideReader):
    """A slide read through openslide-python (with the openslide-bin library)."""

    backend = "openslide"

    def __init__(self, path: str | Path, mpp: MppLike = None) -> None:
        super().__init__(path, mpp)
        import openslide

        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            raise InputError(self.path, f"OpenSlide cannot open this file ({exc})") from exc
        self._dims = check_levels(self.path, list(self._slide.level_dimensions))
        self._os_downsamples = list(self._slide.level_downsamples)
        self._props = {str(k): str(v) for k, v in self._slide.properties.items()}

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return self._dims

    @property
    def properties(self) -> dict[str, str]:
        return dict(self._props)

    @property
    def vendor(self) -> str | None:
        return self._props.get(Slide.OPENSLIDE_VENDOR)

    @property
    def objective_power(self) -> float | None:
        return parse_float(self._props.get(Slide.OPENSLIDE_OBJECTIVE))

    @property
    def associated_images(self) -> list[str]:
        return sorted(self._slide.associated_images)

    def read_associated(self, name: str) -> np.ndarray:
        if name not in self._slide.associated_images:
            return super().read_associated(name)
        return rgba_to_rgb(np.asarray(self._slide.associated_images[name].convert("RGBA")))

    def _native_mpp(self) -> tuple[float, float] | None:
        mx = parse_float(self._props.get(Slide.OPENSLIDE_MPP_X))
        my = parse_float(self._props.get(Slide.OPENSLIDE_MPP_Y))
        if mx and my and mx > 0 and my > 0:
            return (mx, my)
        return mpp_from_resolution(
            self._props.get("tiff.XResolution"),
            self._props.get("tiff.YResolution"),
            self._props.get("tiff.ResolutionUnit"),
        )

    def _read_level_raw(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        import openslide

        ds = self._os_downsamples[level]
        # OpenSlide takes the origin in level-0 pixels and divides by its downsample again
        loc = (round(x * ds), round(y * ds))
        try:
            region = self._slide.read_region(loc, level, (width, height))
        except openslide.OpenSlideError as exc:
            raise InputError(self.path, f"cannot decode region at level {level} ({exc})") from exc
        return rgba_to_rgb(np.asarray(region))

    def close(self) -> None:
        self._slide.close()

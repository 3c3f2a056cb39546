"""Plain-image backend: PNG and JPEG files without a pyramid (ROIs, TMA cores, patches).

The whole image is decoded once, on first use, and kept as one level-0 array: such images are
small next to a slide, and a single decode is cheaper than PIL's per-region crops of a
compressed file. Physical size comes from the file's resolution (PNG ``pHYs``, JPEG JFIF/EXIF
density) only where it is plausible for a microscope image; the 72/96 dpi that image software
writes by default means "unknown", so such files need ``--mpp`` (or a manifest's ``mpp``).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from wsi_stnuc.errors import InputError
from wsi_stnuc.slide.base import MppLike, SlideReader, check_levels
from wsi_stnuc.slide.metadata import mpp_from_resolution

# images bigger than this are slides in the wrong format (and would not fit in memory)
MAX_PIXELS = 40_000 * 40_000
# coarsest µm/px a file's own resolution may state: a microscope image at 1x is about 10; any
# coarser number (300 dpi = 85 µm/px) is a print or screen resolution
MAX_FILE_MPP = 10.0


def _as_rgb(image) -> np.ndarray:
    """A PIL image as ``H x W x 3`` uint8 (16-bit grey scaled down, alpha dropped)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(image, dtype=np.int64)
        grey = np.clip(grey // 257 if grey.max(initial=0) > 255 else grey, 0, 255)
        return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


class ImageReader(SlideReader):
    """A PNG or JPEG image as a one-level slide."""

    backend = "image"

    def __init__(self, path: str | Path, mpp: MppLike = None) -> None:
        super().__init__(path, mpp)
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.path) as image:
                self._format = image.format or ""
                size = image.size
                self._dpi = image.info.get("dpi")
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise InputError(self.path, f"not a readable PNG/JPEG image ({exc})") from exc
        if self._format not in ("PNG", "JPEG", "MPO"):
            raise InputError(self.path, f"image format {self._format!r} is not PNG or JPEG")
        if size[0] * size[1] > MAX_PIXELS:
            raise InputError(
                self.path, f"{size[0]} x {size[1]} px is too big for a plain image; convert it "
                "to a pyramidal TIFF (wsi-stnuc convert)"
            )  # fmt: skip
        self._dims = check_levels(self.path, [size])
        self._pixels: np.ndarray | None = None
        self._lock = threading.Lock()

    def _image(self) -> np.ndarray:
        # one decode even when reader threads ask at once
        with self._lock:
            if self._pixels is None:
                from PIL import Image

                try:
                    with Image.open(self.path) as image:
                        self._pixels = _as_rgb(image)
                except OSError as exc:  # a file cut short decodes with an error here
                    raise InputError(self.path, f"cannot decode image ({exc})") from exc
            return self._pixels

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return self._dims

    @property
    def properties(self) -> dict[str, str]:
        props = {"image.format": self._format}
        if self._dpi:
            props["image.dpi"] = ",".join(f"{float(v):g}" for v in self._dpi)
        return props

    @property
    def vendor(self) -> str | None:
        return self._format.lower() or None

    def _native_mpp(self) -> tuple[float, float] | None:
        if not self._dpi or len(self._dpi) != 2:
            return None
        mpp = mpp_from_resolution(float(self._dpi[0]), float(self._dpi[1]), "inch")
        if mpp is None or max(mpp) > MAX_FILE_MPP:
            return None
        return mpp

    def _read_level_raw(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self._image()[y : y + height, x : x + width].copy()

    def close(self) -> None:
        self._pixels = None

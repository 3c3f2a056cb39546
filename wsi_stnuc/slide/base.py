"""The slide-reader protocol: one base class every backend implements.

Coordinate contract (see docs/DESIGN.md, "Conventions"): every position is in **level-0 pixels**, float,
x to the right, y down, origin at the top-left corner of the top-left pixel; pixel (row i,
col j) covers ``[j, j+1) x [i, i+1)``. Images are ``H x W x 3`` uint8 RGB; anything outside
the slide reads as white (255). Physical size comes from the slide's µm/px (``mpp``), which a
caller may override; a slide without it raises :class:`InputError` asking for ``--mpp``.

A backend implements only the raw access (``_read_level_raw`` inside level bounds, metadata);
level choice, resampling, padding and the thumbnail live here, so all backends agree.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from wsi_stnuc.errors import InputError
from wsi_stnuc.slide.resample import resample_region

# A level is usable for a requested resolution if its mpp exceeds the request by at most this
# fraction: vendor pyramids have non-integer downsamples (4.0005), and reading 0.1 % coarser
# than asked loses nothing a model could see.
LEVEL_TOLERANCE = 1e-2

MppLike = float | tuple[float, float] | None


def normalize_mpp(path: Path, mpp: MppLike) -> tuple[float, float] | None:
    """``mpp`` as a positive ``(x, y)`` pair, or None; a bad value is an InputError."""
    if mpp is None:
        return None
    pair = (float(mpp), float(mpp)) if np.isscalar(mpp) else tuple(float(v) for v in mpp)
    if len(pair) != 2 or not all(math.isfinite(v) and v > 0 for v in pair):
        raise InputError(path, f"mpp must be a positive number or (x, y) pair, got {mpp!r}")
    return pair  # type: ignore[return-value]


class SlideReader(ABC):
    """A whole-slide image opened lazily as a pyramid of levels.

    Subclasses set ``path`` and ``backend``, call ``super().__init__(path, mpp)`` and
    implement the abstract members. Readers are context managers; ``close()`` frees handles.
    """

    path: Path
    backend: str = "abstract"

    def __init__(self, path: str | Path, mpp: MppLike = None) -> None:
        self.path = Path(path)
        self._mpp_override = normalize_mpp(self.path, mpp)

    # ---- backend-specific members -------------------------------------------------------
    @property
    @abstractmethod
    def level_dimensions(self) -> list[tuple[int, int]]:
        """``(width, height)`` of every level, level 0 first."""

    @property
    @abstractmethod
    def properties(self) -> dict[str, str]:
        """Backend metadata as strings (vendor keys, TIFF tags, OME fields)."""

    @abstractmethod
    def _native_mpp(self) -> tuple[float, float] | None:
        """The file's own µm/px at level 0, or None if it does not say."""

    @abstractmethod
    def _read_level_raw(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Pixels of ``level`` in ``[x, x+width) x [y, y+height)``, fully inside the level."""

    @property
    def vendor(self) -> str | None:
        """Scanner vendor or file flavour, if known."""
        return None

    @property
    def objective_power(self) -> float | None:
        """Scanning objective magnification, if the file records it."""
        return None

    @property
    def associated_images(self) -> list[str]:
        """Names of non-pyramid images (label, macro, thumbnail)."""
        return []

    def read_associated(self, name: str) -> np.ndarray:
        """An associated image as ``H x W x 3`` uint8."""
        raise InputError(self.path, f"no associated image {name!r} (have {self.associated_images})")

    @abstractmethod
    def close(self) -> None:
        """Release file handles; the reader is unusable afterwards."""

    # ---- derived, shared by every backend ------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def level_downsamples(self) -> list[float]:
        """Mean of the x and y downsample of each level relative to level 0 (as OpenSlide)."""
        w0, h0 = self.dimensions
        return [(w0 / w + h0 / h) / 2.0 for w, h in self.level_dimensions]

    @property
    def mpp_override(self) -> tuple[float, float] | None:
        """The ``(x, y)`` µm/px the caller forced at open time, if any."""
        return self._mpp_override

    @property
    def native_mpp(self) -> tuple[float, float] | None:
        """The file's own ``(x, y)`` µm/px at level 0, or None if it does not say."""
        return self._native_mpp()

    @property
    def mpp_source(self) -> str:
        """Where :attr:`mpp` comes from: ``"file"``, ``"forced"`` (an override of the file's
        own value) or ``"filled"`` (given for a file without one)."""
        if self._mpp_override is None:
            return "file"
        return "filled" if getattr(self, "_mpp_filled", False) else "forced"

    def fill_missing_mpp(self, mpp: MppLike) -> None:
        """Use ``mpp`` where the file states no µm/px (and nothing was forced); else no-op."""
        if mpp is None or self._mpp_override is not None or self._native_mpp() is not None:
            return
        self._mpp_override = normalize_mpp(self.path, mpp)
        self._mpp_filled = True

    @property
    def mpp(self) -> tuple[float, float]:
        """``(x, y)`` µm per level-0 pixel: the override if given, else the file's own."""
        if self._mpp_override is not None:
            return self._mpp_override
        native = self._native_mpp()
        if native is None:
            raise InputError(
                self.path, "slide has no microns-per-pixel metadata; pass --mpp (µm/px at level 0)"
            )
        return native

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Raw pixels of one level; ``x, y, width, height`` in that level's pixels.

        Parts outside the level are white (255).
        """
        if not 0 <= level < self.level_count:
            raise IndexError(f"{self.path}: level {level} not in 0..{self.level_count - 1}")
        if width < 0 or height < 0:
            raise ValueError(f"negative region size {width} x {height}")
        lw, lh = self.level_dimensions[level]
        if x >= 0 and y >= 0 and x + width <= lw and y + height <= lh and width and height:
            return self._read_level_raw(level, x, y, width, height)
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        cx0, cy0 = max(x, 0), max(y, 0)
        cx1, cy1 = min(x + width, lw), min(y + height, lh)
        if cx1 > cx0 and cy1 > cy0:
            out[cy0 - y : cy1 - y, cx0 - x : cx1 - x] = self._read_level_raw(
                level, cx0, cy0, cx1 - cx0, cy1 - cy0
            )
        return out

    def best_level(self, scale: float) -> int:
        """The coarsest level whose downsample is at most ``scale`` (level-0 px per output px)."""
        w0, h0 = self.dimensions
        best, best_ds = 0, 1.0
        for i, (w, h) in enumerate(self.level_dimensions):
            ds = min(w0 / w, h0 / h)
            if ds <= scale * (1 + LEVEL_TOLERANCE) and ds > best_ds:
                best, best_ds = i, ds
        return best

    def read_scaled(
        self, x0: float, y0: float, width: int, height: int, sx: float, sy: float
    ) -> np.ndarray:
        """``height x width`` output pixels covering level-0 ``[x0, x0+width*sx) x [y0, ...)``.

        The workhorse of :meth:`read_region` for callers that think in level-0 scale factors.
        """
        if width <= 0 or height <= 0:
            raise ValueError(f"output size must be positive, got {width} x {height}")
        if not (sx > 0 and sy > 0):
            raise ValueError(f"scale factors must be positive, got {sx}, {sy}")
        level = self.best_level(min(sx, sy))
        w0, h0 = self.dimensions
        lw, lh = self.level_dimensions[level]
        dx, dy = w0 / lw, h0 / lh
        # window in level pixels, fractional
        fx0, fy0 = x0 / dx, y0 / dy
        fx, fy = sx / dx, sy / dy  # level pixels per output pixel
        if _is_exact(fx0, fy0, fx, fy):
            ix, iy = round(fx0), round(fy0)
            return self.read_level(level, ix, iy, width, height)
        # one pixel margin so bilinear sampling at the window edge sees real neighbours
        ix0, iy0 = math.floor(fx0) - 1, math.floor(fy0) - 1
        ix1 = math.ceil(fx0 + width * fx) + 1
        iy1 = math.ceil(fy0 + height * fy) + 1
        raw = self.read_level(level, ix0, iy0, ix1 - ix0, iy1 - iy0)
        return resample_region(raw, (fx0 - ix0, fy0 - iy0), (fx, fy), (height, width))

    def read_region(
        self, x0: float, y0: float, width: int, height: int, mpp: float | None = None
    ) -> np.ndarray:
        """Exactly ``height x width x 3`` uint8 at ``mpp`` µm/px (None: level-0 pixels).

        ``(x0, y0)`` is the level-0 top-left corner; the output covers level-0
        ``[x0, x0 + width*sx) x [y0, y0 + height*sy)`` with ``sx = mpp / mpp_x`` (same for y).
        Reads the coarsest level not coarser than ``mpp``, then resizes (area averaging when
        shrinking, bilinear when enlarging). Outside the slide is white.
        """
        if mpp is None:
            sx = sy = 1.0
        else:
            mpp_x, mpp_y = self.mpp
            sx, sy = float(mpp) / mpp_x, float(mpp) / mpp_y
        return self.read_scaled(x0, y0, int(width), int(height), sx, sy)

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """The whole slide with its longer side ``max_size`` px (aspect kept)."""
        w0, h0 = self.dimensions
        scale = max(w0, h0) / float(max_size)
        width, height = max(1, round(w0 / scale)), max(1, round(h0 / scale))
        return self.read_scaled(0.0, 0.0, width, height, w0 / width, h0 / height)

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"{type(self).__name__}({str(self.path)!r}, {w}x{h}, levels={self.level_count})"


def _is_exact(fx0: float, fy0: float, fx: float, fy: float, eps: float = 1e-6) -> bool:
    """True if the window is a plain integer crop of the level (no resampling needed)."""
    return (
        abs(fx - 1) < eps
        and abs(fy - 1) < eps
        and abs(fx0 - round(fx0)) < eps
        and abs(fy0 - round(fy0)) < eps
    )


def check_levels(path: Path, dims: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Validate level sizes from a file; a zero-size or missing level is an InputError."""
    if not dims:
        raise InputError(path, "slide has no image levels")
    for i, (w, h) in enumerate(dims):
        if w <= 0 or h <= 0:
            raise InputError(path, f"level {i} has zero size ({w} x {h})")
    return [(int(w), int(h)) for w, h in dims]

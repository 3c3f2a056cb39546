"""What makes a slide hard beyond its nuclei: stain drift, focus drift and debris.

All three act on the hematoxylin / eosin concentration maps of
:func:`wsi_stnuc.synth.painter.paint_he` before they are mixed into RGB, so they stay
physically consistent (Beer-Lambert) with the rest of the painting.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from wsi_stnuc.synth.fields import smooth_field
from wsi_stnuc.synth.style import PaintStyle

__all__ = ["debris_od", "defocus", "stain_strength"]


def stain_strength(
    rng: np.random.Generator, shape: tuple[int, int], mpp: float, cv: float
) -> tuple[np.ndarray, np.ndarray]:
    """Multipliers of the hematoxylin and eosin concentration, drifting over ~300 µm.

    The two stains drift independently (staining time and bath exhaustion differ), so a
    single global hematoxylin threshold is too high in pale regions and too low in dark ones.
    """
    if cv <= 0:
        ones = np.ones(shape, np.float32)
        return ones, ones
    h = 1.0 + cv * smooth_field(rng, shape, 300 / mpp, coarse=16)
    e = 1.0 + cv * smooth_field(rng, shape, 300 / mpp, coarse=16)
    return np.clip(h, 0.4, 1.8), np.clip(e, 0.4, 1.8)


def defocus(
    maps: tuple[np.ndarray, ...],
    rng: np.random.Generator,
    mpp: float,
    *,
    sharp_um: float,
    style: PaintStyle,
) -> tuple[np.ndarray, ...]:
    """Blur each map like optics: ``sharp_um`` in focus, ``style.defocus_blur_um`` in the
    out-of-focus share of the section (smooth patches of ~150 µm, soft edges)."""
    sharp = tuple(ndimage.gaussian_filter(m, sharp_um / mpp) for m in maps)
    if style.defocus_fraction <= 0:
        return sharp
    field = smooth_field(rng, maps[0].shape, 150 / mpp, coarse=16)
    level = np.quantile(field, 1.0 - style.defocus_fraction)
    weight = np.clip((field - level) / 0.3 + 0.5, 0.0, 1.0).astype(np.float32)
    blurred = (ndimage.gaussian_filter(m, style.defocus_blur_um / mpp) for m in maps)
    return tuple(s + weight * (b - s) for s, b in zip(sharp, blurred, strict=True))


def debris_od(
    rng: np.random.Generator, tissue: np.ndarray, mpp: float, per_mm2: float
) -> np.ndarray:
    """Hematoxylin OD of debris: clusters of 1-5 small, very dark specks on the tissue.

    Karyorrhectic fragments and dust look like this: darker than any nucleus, a few µm
    across, without chromatin texture or a membrane. They have no ST cell, so they are in no
    label and no truth; a threshold takes the larger clusters for nuclei.
    """
    h, w = tissue.shape
    out = np.zeros(tissue.shape, np.float32)
    area_mm2 = tissue.sum() * (mpp / 1000.0) ** 2
    n = rng.poisson(per_mm2 * area_mm2)
    ti, tj = np.nonzero(tissue)
    if n == 0 or len(ti) == 0:
        return out
    pick = rng.integers(0, len(ti), n)
    n_specks = rng.integers(1, 6, n)
    owner = np.repeat(np.arange(n), n_specks)
    spread = rng.uniform(0.5, 2.5, len(owner)) / mpp
    angle = rng.uniform(0, 2 * np.pi, len(owner))
    cx = tj[pick][owner] + 0.5 + spread * np.cos(angle)
    cy = ti[pick][owner] + 0.5 + spread * np.sin(angle)
    radius = rng.uniform(0.5, 1.4, len(owner)) / mpp
    od = rng.uniform(1.8, 2.6, len(owner)).astype(np.float32)
    half = int(np.ceil(radius.max())) + 1
    off = np.arange(-half, half + 1)
    ix = np.floor(cx).astype(np.intp)[:, None, None] + off[None, None, :]
    iy = np.floor(cy).astype(np.intp)[:, None, None] + off[None, :, None]
    inside = np.hypot(ix + 0.5 - cx[:, None, None], iy + 0.5 - cy[:, None, None])
    inside = (inside < radius[:, None, None]) & (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    k, yy, xx = np.nonzero(inside)
    # Overlapping specks of one cluster keep the darker value, not the sum: no "super-dark" core.
    np.maximum.at(out, (iy[k, yy, 0], ix[k, 0, xx]), od[k])
    return out

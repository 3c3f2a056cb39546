"""Smooth random fields and the tissue layout (tissue, tumour nests, lymphoid aggregates)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def smooth_field(
    rng: np.random.Generator, shape: tuple[int, int], scale_px: float, *, coarse: int = 4
) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ~``scale_px``.

    Generated on a grid ``coarse`` times smaller and upsampled, so large scales stay cheap.
    """
    h, w = shape
    step = max(1, int(min(coarse, scale_px / 4)))
    small = rng.standard_normal((h // step + 2, w // step + 2)).astype(np.float32)
    small = ndimage.gaussian_filter(small, scale_px / step, mode="wrap")
    if step > 1:
        small = ndimage.zoom(small, step, order=1)
    field = small[:h, :w]
    std = field.std()
    return (field - field.mean()) / (std if std > 0 else 1.0)


@dataclass
class Layout:
    """Boolean region maps (H x W) and the local fibre direction (radians)."""

    tissue: np.ndarray
    nest: np.ndarray
    lymphoid: np.ndarray
    fibre_angle: np.ndarray

    def region_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Region code at level-0 points: 0 none, 1 stroma, 2 nest, 3 lymphoid aggregate."""
        h, w = self.tissue.shape
        j = np.clip(x.astype(np.intp), 0, w - 1)
        i = np.clip(y.astype(np.intp), 0, h - 1)
        code = np.where(self.tissue[i, j], 1, 0)
        code = np.where(self.tissue[i, j] & self.lymphoid[i, j], 3, code)
        return np.where(self.tissue[i, j] & self.nest[i, j], 2, code)


def make_layout(
    rng: np.random.Generator,
    shape: tuple[int, int],
    mpp: float,
    *,
    nest_fraction: float = 0.35,
    lymphoid_fraction: float = 0.12,
) -> Layout:
    """Tissue with a white margin, tumour nests (~100 µm) and lymphoid aggregates (~60 µm)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # An elliptical section with a wavy edge: the slide keeps some white glass around it.
    r = np.sqrt(((xx - w / 2) / (0.47 * w)) ** 2 + ((yy - h / 2) / (0.45 * h)) ** 2)
    edge = smooth_field(rng, shape, 80 / mpp, coarse=8) * 0.12
    tissue = (r + edge) < 1.0
    # Small holes (vessels/fat lumina) inside the tissue.
    holes = smooth_field(rng, shape, 20 / mpp, coarse=8) > 2.6
    tissue &= ~holes
    nest_f = smooth_field(rng, shape, 60 / mpp, coarse=16)
    nest = nest_f > np.quantile(nest_f[tissue], 1 - nest_fraction) if tissue.any() else tissue
    lym_f = smooth_field(rng, shape, 30 / mpp, coarse=8)
    stroma = tissue & ~nest
    lymphoid = lym_f > np.quantile(lym_f[stroma], 1 - lymphoid_fraction) if stroma.any() else stroma
    lymphoid &= ~nest
    angle = smooth_field(rng, shape, 150 / mpp, coarse=16) * 0.9 + rng.uniform(0, np.pi)
    return Layout(tissue=tissue, nest=nest, lymphoid=lymphoid, fibre_angle=angle)

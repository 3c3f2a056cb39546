"""Colour deconvolution of H&E(-DAB) images (Ruifrok & Johnston, Anal. Quant. Cytol. Histol. 2001).

Beer-Lambert: the optical density ``OD = -log10(I / I0)`` of each RGB channel is a linear mix of
the stains' concentrations, ``OD = C @ M`` where each row of ``M`` is one stain's unit-length OD
vector. Hence ``C = OD @ inv(M)``. ``RUIFROK_HED`` is the H/E/DAB matrix of the original paper
(the one ``skimage.color.rgb2hed`` uses); rows are normalised to unit length here, so a pixel
stained only by hematoxylin at optical density ``d`` along its vector gives ``C = (d, 0, 0)``.

Unlike ``skimage.color.rgb2hed`` (which divides by ``log(1e-6)`` and clips), values here are in
real OD units (log10, ``I0 = 255``), so thresholds carry over between images and scanners.
All functions are vectorised over any ``... x 3`` array and return float32.
"""

from __future__ import annotations

import numpy as np

#: Background intensity of brightfield scans (8 bit).
I0 = 255.0
#: Ruifrok & Johnston's stain OD vectors (rows: hematoxylin, eosin, DAB), unit length.
RUIFROK_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
RUIFROK_HED = RUIFROK_HED / np.linalg.norm(RUIFROK_HED, axis=1, keepdims=True)
#: Largest OD an 8-bit pixel can carry (intensity 1 of 255).
MAX_OD = float(np.log10(I0))


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim < 1 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an RGB array with a last axis of 3, got shape {rgb.shape}")
    return rgb


def rgb_to_od(rgb: np.ndarray) -> np.ndarray:
    """Optical density ``-log10(I / 255)`` per channel; intensities are clipped to ``[1, 255]``
    so black pixels give a finite OD (``log10(255)``) and white gives 0."""
    rgb = _check_rgb(rgb).astype(np.float32)
    return (-np.log10(np.clip(rgb, 1.0, I0) / np.float32(I0))).astype(np.float32)


def od_to_rgb(od: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_od`: uint8 RGB from optical densities (clipped to ``[0, 255]``)."""
    od = _check_rgb(od)
    rgb = I0 * np.power(10.0, -np.asarray(od, dtype=np.float64))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _inverse(stain_matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(stain_matrix, dtype=np.float64)
    if m.shape != (3, 3):
        raise ValueError(f"stain matrix must be 3 x 3 (rows = stains), got {m.shape}")
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    return np.linalg.inv(m)


def rgb_to_hed(rgb: np.ndarray, stain_matrix: np.ndarray = RUIFROK_HED) -> np.ndarray:
    """Stain concentrations (OD units) of each pixel: ``... x 3`` float32 (H, E, DAB).

    ``stain_matrix`` rows are the stains' OD vectors (normalised here); values can be slightly
    negative where a pixel's colour lies outside the stains' cone (noise, JPEG), as in the paper.
    """
    od = rgb_to_od(rgb)
    inv = _inverse(stain_matrix).astype(np.float32)
    return np.tensordot(od, inv, axes=([-1], [0])).astype(np.float32)


def hed_to_rgb(hed: np.ndarray, stain_matrix: np.ndarray = RUIFROK_HED) -> np.ndarray:
    """Recompose uint8 RGB from stain concentrations (inverse of :func:`rgb_to_hed`)."""
    hed = _check_rgb(hed)
    m = np.asarray(stain_matrix, dtype=np.float64)
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    return od_to_rgb(np.tensordot(np.asarray(hed, dtype=np.float64), m, axes=([-1], [0])))


def hematoxylin_od(rgb: np.ndarray, stain_matrix: np.ndarray = RUIFROK_HED) -> np.ndarray:
    """Hematoxylin concentration (OD units, >= 0) per pixel: ``H x W`` float32 for ``H x W x 3``.

    Computed as one dot product per pixel (no full deconvolution), so it is cheap on large tiles.
    """
    od = rgb_to_od(rgb)
    col = _inverse(stain_matrix)[:, 0].astype(np.float32)
    return np.maximum(od @ col, 0.0).astype(np.float32)


def eosin_od(rgb: np.ndarray, stain_matrix: np.ndarray = RUIFROK_HED) -> np.ndarray:
    """Eosin concentration (OD units, >= 0) per pixel; see :func:`hematoxylin_od`."""
    od = rgb_to_od(rgb)
    col = _inverse(stain_matrix)[:, 1].astype(np.float32)
    return np.maximum(od @ col, 0.0).astype(np.float32)

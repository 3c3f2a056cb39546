"""Paint an H&E-looking RGB image from a layout and nuclei, by Beer-Lambert stain mixing.

Hematoxylin and eosin concentration maps are built separately (eosin: stroma fibres, denser
tumour cytoplasm; hematoxylin: nuclei with type-specific density, membrane rim, nucleolus and
chromatin texture), mixed with stain vectors in optical-density space, blurred like optics and
converted to RGB. The instance map of the painted nuclei is returned alongside. A
:class:`~wsi_stnuc.synth.style.PaintStyle` sets how hard the image is (overlap, pale chromatin,
stain and focus drift, debris; :mod:`wsi_stnuc.synth.artefacts`).
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from wsi_stnuc.synth.artefacts import debris_od, defocus, stain_strength
from wsi_stnuc.synth.fields import Layout, smooth_field
from wsi_stnuc.synth.nuclei import NUCLEUS_TYPES, Nuclei
from wsi_stnuc.synth.style import PaintStyle

# Ruifrok & Johnston stain vectors (optical density per unit concentration, R G B).
HEMATOXYLIN_OD = np.array([0.65, 0.70, 0.29], dtype=np.float32)
# Eosin leans to the measured (Macenko) direction, pinker than Ruifrok's (0.07, 0.99, 0.11).
EOSIN_OD = np.array([0.10, 0.90, 0.42], dtype=np.float32)
BACKGROUND_OD = np.array([0.02, 0.025, 0.015], dtype=np.float32)  # glass + mounting medium


def rasterize_nuclei(
    nuclei: Nuclei,
    shape: tuple[int, int],
    mpp: float,
    texture: np.ndarray,
    *,
    chunk: int = 1024,
    style: PaintStyle | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Instance map (int32, ids 1..N in order) and the nuclear hematoxylin/eosin OD maps.

    Nuclei are evaluated in chunks on a fixed window around each centre (pixel centres at
    ``+0.5``), with the same boundary formula as :meth:`Nuclei.polygons`. Where nuclei overlap,
    the instance map shows the one of highest ``depth`` and the hematoxylin adds up (stacked
    chromatin is darker). ``style.pale_factor`` / ``pale_chromatin`` make the vesicular type
    (the one with a membrane rim) paler and more clumped.
    """
    style = style or PaintStyle.clean()
    h, w = shape
    top = np.full(shape, -1, dtype=np.int64)  # highest depth painted at each pixel
    hema = np.zeros(shape, dtype=np.float32)
    eos = np.zeros(shape, dtype=np.float32)
    hema_k = np.array([t.hema for t in NUCLEUS_TYPES], dtype=np.float32)
    rim_k = np.array([t.rim for t in NUCLEUS_TYPES], dtype=np.float32)
    chrom_k = np.array([t.chromatin for t in NUCLEUS_TYPES], dtype=np.float32)
    vesicular = rim_k > 0.3
    hema_k = np.where(vesicular, hema_k * style.pale_factor, hema_k)
    chrom_k = np.where(vesicular, chrom_k + style.pale_chromatin, chrom_k)
    nucl_k = np.array([t.nucleolus_um for t in NUCLEUS_TYPES], dtype=np.float32)
    # Chunks of similar size keep the windows tight (lymphocytes need a third of a spindle's).
    reach = np.maximum(nuclei.a, nuclei.b) * (1 + nuclei.amp.sum(axis=1))
    by_reach = np.argsort(reach, kind="stable")
    for start in range(0, len(nuclei), chunk):
        rows = by_reach[start : start + chunk]
        nu = nuclei.take(rows)
        half = int(np.ceil(reach[rows].max())) + 1
        off = np.arange(-half, half + 1, dtype=np.float32)
        ix = np.floor(nu.cx).astype(np.intp)[:, None, None] + off.astype(np.intp)[None, None, :]
        iy = np.floor(nu.cy).astype(np.intp)[:, None, None] + off.astype(np.intp)[None, :, None]
        dx = ix + 0.5 - nu.cx[:, None, None]
        dy = iy + 0.5 - nu.cy[:, None, None]
        c, s = np.cos(nu.theta)[:, None, None], np.sin(nu.theta)[:, None, None]
        u = (dx * c + dy * s) / nu.a[:, None, None]
        v = (-dx * s + dy * c) / nu.b[:, None, None]
        rho = np.hypot(u, v)
        phi = np.arctan2(v, u)
        rb = nu.boundary_radius(phi.reshape(len(nu), -1)).reshape(rho.shape)
        rel = rho / rb  # 0 at the centre, 1 on the outline
        inside = (rel < 1) & (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        k = nu.kind
        tex = texture[np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)]
        od = hema_k[k][:, None, None] * (1 + chrom_k[k][:, None, None] * tex)
        od = od + rim_k[k][:, None, None] * np.clip((rel - 0.7) / 0.3, 0, 1) ** 2
        # Nucleolus: a small dense, slightly eosinophilic dot off-centre.
        n_r = (nucl_k[k] / mpp)[:, None, None]
        du = (u - nu.nucleolus[:, 0, None, None]) * nu.a[:, None, None]
        dv = (v - nu.nucleolus[:, 1, None, None]) * nu.b[:, None, None]
        dot = (n_r > 0) & (np.hypot(du, dv) < n_r)
        od = np.where(dot, od + 0.9, od)
        n_idx, yy, xx = np.nonzero(inside)
        gy, gx = iy[n_idx, yy, 0], ix[n_idx, 0, xx]
        np.maximum.at(top, (gy, gx), nuclei.depth[rows[n_idx]])
        np.add.at(hema, (gy, gx), np.maximum(od[n_idx, yy, xx], 0.05))
        np.maximum.at(eos, (gy, gx), np.where(dot[n_idx, yy, xx], 0.5, 0.08).astype(np.float32))
    by_depth = np.empty(len(nuclei) + 1, dtype=np.int32)  # depth -> id; index -1 -> 0
    by_depth[nuclei.depth] = np.arange(1, len(nuclei) + 1)
    by_depth[-1] = 0
    return by_depth[top], hema, eos


def oriented_fibres(
    rng: np.random.Generator,
    shape: tuple[int, int],
    angle: np.ndarray,
    mpp: float,
    *,
    length_um: float = 10.0,
    width_um: float = 0.6,
    n_bins: int = 4,
) -> np.ndarray:
    """Fibre texture in [0, 1]: noise stretched along the local ``angle`` (radians).

    Noise is filtered in Fourier space with an anisotropic Gaussian for a few fixed
    orientations, and the orientations are blended by the local angle, so fibres bend smoothly.
    """
    h, w = shape
    white = sfft.rfft2(rng.standard_normal(shape, dtype=np.float32))
    ky = np.fft.fftfreq(h)[:, None].astype(np.float32) * 2 * np.pi
    kx = np.fft.rfftfreq(w)[None, :].astype(np.float32) * 2 * np.pi
    s_par, s_perp = length_um / mpp, width_um / mpp
    out = np.zeros(shape, dtype=np.float32)
    total = np.zeros(shape, dtype=np.float32)
    for alpha in np.arange(n_bins) * np.pi / n_bins:
        k_par = kx * np.cos(alpha) + ky * np.sin(alpha)
        k_perp = -kx * np.sin(alpha) + ky * np.cos(alpha)
        filt = np.exp(-0.5 * ((k_par * s_par) ** 2 + (k_perp * s_perp) ** 2), dtype=np.float32)
        band = sfft.irfft2(white * filt, s=shape)
        band /= band.std() or 1.0
        weight = np.cos(angle - alpha) ** 8  # sharp blend between neighbouring bins
        out += weight * band
        total += weight
    out /= np.maximum(total, 1e-6)
    return np.clip(out, 0, None) ** 1.5 / 3.0


def blur_mask(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-blurred float32 copy of a boolean mask; large sigmas run on a subsampled grid."""
    step = max(1, int(sigma / 3))
    small = ndimage.gaussian_filter(mask[::step, ::step].astype(np.float32), sigma / step)
    if step == 1:
        return small
    big = ndimage.zoom(small, step, order=1, grid_mode=True, mode="nearest")
    big = big[: mask.shape[0], : mask.shape[1]]
    pad = ((0, mask.shape[0] - big.shape[0]), (0, mask.shape[1] - big.shape[1]))
    return np.pad(big, pad, mode="edge") if any(p[1] for p in pad) else big


def paint_he(
    layout: Layout,
    nuclei: Nuclei,
    rng: np.random.Generator,
    mpp: float,
    *,
    blur_um: float = 0.45,
    noise: float = 0.02,
    style: PaintStyle | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (RGB uint8 H x W x 3, instance map int32) of an H&E-like section.

    ``style`` (default :meth:`PaintStyle.clean`) adds overlap shading, pale chromatin, stain
    and focus drift and debris; the random draws for them come after the clean ones, so a
    clean image of a seed is the same whatever the style code does.
    """
    style = style or PaintStyle.clean()
    shape = layout.tissue.shape
    soft = blur_mask(layout.tissue, 3 / mpp)
    # Eosin: collagen fibres along the local direction, denser pink cytoplasm in nests.
    fibres = oriented_fibres(rng, shape, layout.fibre_angle, mpp)
    mottle = smooth_field(rng, shape, 25 / mpp, coarse=8)
    nest = blur_mask(layout.nest, 4 / mpp)
    lymph = blur_mask(layout.lymphoid, 4 / mpp)
    eos = soft * (0.28 + 0.05 * mottle + 0.35 * fibres * (1 - nest) * (1 - 0.6 * lymph))
    eos += soft * nest * (0.30 + 0.08 * smooth_field(rng, shape, 3 / mpp, coarse=2))
    hema = soft * (0.05 + 0.05 * nest + 0.08 * lymph)
    # Chromatin texture: fine-grained noise at ~0.7 µm.
    texture = smooth_field(rng, shape, 0.35 / mpp, coarse=1)
    inst, nuc_h, nuc_e = rasterize_nuclei(nuclei, shape, mpp, texture, style=style)
    in_nuc = inst > 0
    hema = np.where(in_nuc, nuc_h, hema)
    eos = np.where(in_nuc, nuc_e + 0.3 * eos, eos)
    od_noise = noise * rng.standard_normal((*shape, 3), dtype=np.float32)
    if style.debris_per_mm2 > 0:
        hema = np.maximum(hema, debris_od(rng, layout.tissue, mpp, style.debris_per_mm2))
    h_gain, e_gain = stain_strength(rng, shape, mpp, style.stain_cv)
    # Optical blur is linear in OD, so blurring the two stain maps equals blurring RGB OD.
    hema, eos = defocus((hema * h_gain, eos * e_gain), rng, mpp, sharp_um=blur_um, style=style)
    od = hema[..., None] * HEMATOXYLIN_OD + eos[..., None] * EOSIN_OD + BACKGROUND_OD
    od += od_noise
    rgb = 255.0 * np.exp(-np.clip(od, 0, None))
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), inst

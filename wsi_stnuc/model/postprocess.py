"""Network heads -> labelled nucleus instances (HoVer-Net's marker-controlled watershed).

Steps, all whole-image array operations:

1. foreground = ``np_prob >= np_threshold`` (holes filled, specks removed);
2. boundary energy from the HV maps: inside a nucleus the horizontal map rises left to right
   and the vertical map top to bottom, so a *falling* map (negative Sobel derivative) marks a
   border between nuclei. Unlike HoVer-Net, the energy has a fixed scale (1 = the map falls by
   1 per pixel), not a per-tile min-max, so a pixel's result does not depend on which tile it
   was read in — the stitching contract needs that;
3. markers = foreground minus high-energy pixels, opened, labelled;
4. watershed of the smoothed energy from the markers, restricted to the foreground. Only
   foreground components holding two or more markers are flooded (a component with one
   marker is that instance), and only from the markers' rims; the labels are exactly those of
   one whole-tile ``skimage.segmentation.watershed`` (``tests/model/test_postprocess_reference``);
5. per-instance statistics with ``np.bincount`` (no Python loop over nuclei).
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from wsi_stnuc.formats import NucleusCols

# scipy's Sobel = [-1, 0, 1] derivative x [1, 2, 1] smoothing: a ramp of slope 1 per pixel
# gives 2 * 4 = 8.
_SOBEL_UNIT_SLOPE = 8.0

# Physical size guards (µm²), the defaults for checkpoints that do not store their own.
# Measured on the manual MoNuSeg training polygons (4,566 nuclei not touching a tile edge,
# 0.25 µm/px): 1 % are under 4.8 µm², the median is 29, the 99.9th percentile 196 and the
# largest 321 µm². 4 µm² (a 2.3 µm disc) drops specks and tangential slivers but < 1 % of real
# nuclei; 500 µm² (a 25 µm disc) keeps the largest pleomorphic tumour nuclei with room to
# spare while a block of tissue or a fold, which a model can mistake for one huge nucleus, is
# dropped. Megakaryocytes and giant cells (> 50 µm) are out of scope. The maximum also sets
# the halo that stitching needs (``inference.segmenter.size_guards``).
MIN_NUCLEUS_AREA_UM2 = 4.0
MAX_NUCLEUS_AREA_UM2 = 500.0


def boundary_energy(hv: np.ndarray) -> np.ndarray:
    """Per-pixel border evidence in [0, 1] from HV maps ``2 x H x W`` (falling gradients)."""
    dh = ndi.sobel(hv[0].astype(np.float32, copy=False), axis=1)
    dv = ndi.sobel(hv[1].astype(np.float32, copy=False), axis=0)
    energy = np.maximum(-dh, -dv) / _SOBEL_UNIT_SLOPE
    return np.clip(energy, 0.0, 1.0)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes`` (4-connected background) by one labelling pass: the scipy
    version floods by repeated dilation, one full-image pass per pixel of flood distance."""
    bg_lab, n = ndi.label(~mask)
    if n == 0:
        return mask.copy()
    outside = np.zeros(n + 1, bool)
    for edge in (bg_lab[0], bg_lab[-1], bg_lab[:, 0], bg_lab[:, -1]):
        outside[edge] = True
    return ~outside[bg_lab] | mask


def _open4(mask: np.ndarray, radius: int) -> np.ndarray:
    """``ndi.binary_opening`` with the 4-neighbour cross, ``iterations=radius`` (outside the
    image counts as background), as whole-array shifts: scipy's generic structuring-element
    loop costs several times more on a bool tile."""
    out = mask
    for _ in range(radius):
        src, out = out, out.copy()
        out[1:] &= src[:-1]
        out[:-1] &= src[1:]
        out[:, 1:] &= src[:, :-1]
        out[:, :-1] &= src[:, 1:]
        out[[0, -1]] = False
        out[:, [0, -1]] = False
    for _ in range(radius):
        src, out = out, out.copy()
        out[1:] |= src[:-1]
        out[:-1] |= src[1:]
        out[:, 1:] |= src[:, :-1]
        out[:, :-1] |= src[:, 1:]
    return out


def _keep_large(labels: np.ndarray, n: int, min_area: int) -> np.ndarray:
    """Lookup ``0..n -> 0..N`` that drops labels under ``min_area`` px (or absent) and numbers
    the rest in label order, as ``relabel_sequential`` does."""
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    keep = areas >= max(min_area, 1)
    keep[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut


def _flood(relief: np.ndarray, seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``watershed(relief, seeds, mask=mask)`` with the work cut to the markers' rims.

    A marker pixel whose 4-neighbours are all marker or outside the mask pops off the flood
    queue without pushing anything; it is taken out of the mask (a wall, just as a labelled
    pixel is) and its label put back afterwards. Most marker pixels are such inner pixels.
    """
    marked = seeds > 0
    free = mask & ~marked
    touch = np.zeros_like(free)
    touch[1:] |= free[:-1]
    touch[:-1] |= free[1:]
    touch[:, 1:] |= free[:, :-1]
    touch[:, :-1] |= free[:, 1:]
    rim = marked & touch
    flooded = watershed(relief, np.where(rim, seeds, 0), mask=free | rim)
    return np.where(marked, seeds, flooded)


def heads_to_instances(
    np_prob: np.ndarray,
    hv: np.ndarray,
    tp_prob: np.ndarray | None,
    *,
    np_threshold: float = 0.5,
    energy_threshold: float = 0.05,
    min_area_px: int = 10,
    marker_radius: int = 1,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Instances from one tile's heads (``np_prob`` H x W, ``hv`` 2 x H x W, ``tp_prob``
    (K + 1) x H x W or None).

    Returns ``inst`` (int32 H x W, 0 background, 1..N) and a DataFrame with one row per
    instance: ``label``, ``class_id`` (argmax of the mean class probability over the
    instance's pixels, background excluded; 0 when ``tp_prob`` is None), ``det_prob`` (mean
    nucleus probability), ``prob_1..prob_K`` (mean class probabilities renormalised over the K
    classes), ``area_px``, and the centroid ``centroid_x``/``centroid_y`` in model pixels with
    the pixel-corner convention (pixel (i, j) covers [j, j+1) x [i, i+1), so a lone pixel's
    centroid is (j + 0.5, i + 0.5)).

    ``min_area_px`` removes specks (model px) before the markers are made; the physical size
    guards (µm², :data:`MIN_NUCLEUS_AREA_UM2`, :data:`MAX_NUCLEUS_AREA_UM2`) apply to every
    model's output at stitching (``inference.stitch.size_guard``).

    ``energy_threshold``: markers are the foreground pixels whose HV maps fall by less than
    this per pixel. 0.05 was chosen on the validation images of the CoNSeP training split
    (networks of ``benchmarks/README.md`` trained on manual and on ST labels): PQ is flat
    from 0.01 to 0.05 and falls above it (0.43 vs 0.32 for the ST model at the earlier 0.4),
    because touching nuclei then share one marker and stay merged.
    """
    np_prob = np.asarray(np_prob, dtype=np.float32)
    hv = np.asarray(hv, dtype=np.float32)
    if np_prob.ndim != 2 or hv.shape != (2, *np_prob.shape):
        raise ValueError(f"heads disagree: np {np_prob.shape}, hv {hv.shape}")
    if tp_prob is not None and (tp_prob.ndim != 3 or tp_prob.shape[1:] != np_prob.shape):
        raise ValueError(f"heads disagree: np {np_prob.shape}, tp {tp_prob.shape}")

    fg = _fill_holes(np_prob >= np_threshold)
    fg_lab, n_fg = ndi.label(fg)
    if min_area_px > 1 and n_fg:
        lut = _keep_large(fg_lab, n_fg, min_area_px)
        fg_lab = lut[fg_lab]
        n_fg = int(lut.max())
    fg = fg_lab > 0

    energy = boundary_energy(hv) * fg
    markers = _fill_holes(fg & (energy < energy_threshold))
    markers = _open4(markers, marker_radius)
    marker_lab, n_mk = ndi.label(markers)
    if n_mk:
        lut = _keep_large(marker_lab, n_mk, max(2, min_area_px // 4))
        marker_lab = lut[marker_lab]
        n_mk = int(lut.max())

    # The watershed floods each 4-connected foreground component on its own, so a component
    # holding one marker is that marker's instance and one without markers stays background:
    # only components with several markers need the flood, done in one call on their joint
    # bounding box. Same labels as one ``watershed(relief, marker_lab, mask=fg)`` of the tile,
    # but for one caveat: skimage orders seed pixels of exactly equal relief by heap position,
    # so a pixel contested only through such a tie could go the other way (none in the tests).
    comp_of = np.zeros(n_mk + 1, np.int64)
    comp_of[marker_lab] = fg_lab
    comp_of = comp_of[1:]
    n_markers = np.bincount(comp_of, minlength=n_fg + 1)
    n_markers[0] = 0
    lut = np.zeros(n_fg + 1, np.int32)
    one = n_markers[comp_of] == 1
    lut[comp_of[one]] = np.flatnonzero(one).astype(np.int32) + 1
    inst = lut[fg_lab]
    multi = n_markers >= 2
    if multi.any():
        boxes = [b for b, m in zip(ndi.find_objects(fg_lab), multi[1:], strict=True) if m]
        box = tuple(
            slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in (0, 1)
        )
        # Low energy in nucleus centres, high on borders: flood from the markers.
        relief = ndi.gaussian_filter(energy, sigma=1.0)
        mask = multi[fg_lab[box]]
        seeds = np.where(mask, marker_lab[box], 0)
        inst[box][mask] = _flood(relief[box], seeds, mask)[mask]
    lut = _keep_large(inst, n_mk, min_area_px)
    inst = lut[inst]
    return inst, instance_table(inst, np_prob, tp_prob)


@functools.lru_cache(maxsize=8)
def _pixel_coords(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Flat float64 row and column index of every pixel; cached, as every tile has one shape."""
    rows, cols = np.indices(shape, dtype=np.float64)
    rows, cols = rows.ravel(), cols.ravel()
    rows.flags.writeable = cols.flags.writeable = False
    return rows, cols


def instance_table(
    inst: np.ndarray, np_prob: np.ndarray, tp_prob: np.ndarray | None
) -> pd.DataFrame:
    """Per-instance statistics of a sequentially labelled map (see :func:`heads_to_instances`)."""
    n = int(inst.max())
    flat = inst.ravel()
    rows, cols = _pixel_coords(inst.shape)
    area = np.bincount(flat, minlength=n + 1).astype(np.float64)
    safe = np.maximum(area, 1.0)
    cx = np.bincount(flat, cols, minlength=n + 1) / safe + 0.5
    cy = np.bincount(flat, rows, minlength=n + 1) / safe + 0.5
    det = np.bincount(flat, np_prob.ravel(), minlength=n + 1) / safe
    table = {
        "label": np.arange(1, n + 1, dtype=np.int32),
        "class_id": np.zeros(n, np.int32),
        "det_prob": det[1:].astype(np.float32),
    }
    if tp_prob is not None and tp_prob.shape[0] > 1:
        k = tp_prob.shape[0] - 1
        means = np.stack(
            [np.bincount(flat, tp_prob[c].ravel(), minlength=n + 1)[1:] for c in range(1, k + 1)],
            axis=1,
        )
        means /= np.maximum(means.sum(axis=1, keepdims=True), 1e-12)
        table["class_id"] = (np.argmax(means, axis=1) + 1).astype(np.int32)
        for c in range(k):
            table[f"{NucleusCols.PROB_PREFIX}{c + 1}"] = means[:, c].astype(np.float32)
    table["area_px"] = area[1:].astype(np.int64)
    table["centroid_x"] = cx[1:]
    table["centroid_y"] = cy[1:]
    return pd.DataFrame(table)

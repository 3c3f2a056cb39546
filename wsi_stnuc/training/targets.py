"""Per-tile training targets (HoVer-Net style) from a LabelSet or from instance maps.

A tile read at the model's resolution with level-0 top-left ``(x0, y0)`` maps level-0 point
``(x, y)`` to model pixels ``((x - x0) / sx, (y - y0) / sy)``. Polygons are rasterised by pixel
centre (pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``, centre ``(j + 0.5, i + 0.5)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import shapely
from scipy import ndimage as ndi
from skimage.draw import polygon as draw_polygon

from wsi_stnuc.classes import IGNORE_CLASS, ClassTable
from wsi_stnuc.errors import InputError
from wsi_stnuc.formats import LabelCols


@dataclass
class Targets:
    """Targets of one tile: ``inst`` int32 (0 bg, 1..N), ``cls`` uint8 (0 bg, 1..K, 255
    ignore), ``hv`` float32 2 x H x W in [-1, 1], ``weight`` float32 H x W (trust in the
    outline: every loss term), ``cls_weight`` float32 H x W (trust in the class: the class
    terms only, on top of ``weight``; 1 on background); ``class_probs`` float32 N x K or
    ``None``: per instance (row ``i - 1`` for instance ``i``), the typing's probability of each
    class (soft class targets; see :mod:`wsi_stnuc.st.labels`)."""

    inst: np.ndarray
    cls: np.ndarray
    hv: np.ndarray
    weight: np.ndarray
    cls_weight: np.ndarray
    class_probs: np.ndarray | None = field(default=None)


def hv_maps(inst: np.ndarray) -> np.ndarray:
    """HoVer-Net distance maps ``2 x H x W``: per instance, the horizontal (x) and vertical (y)
    offset of each pixel from the instance centroid, negative and positive sides scaled
    separately to [-1, 0] and [0, 1]. Background is 0."""
    inst = np.asarray(inst)
    out = np.zeros((2, *inst.shape), np.float32)
    fg = inst > 0
    if not fg.any():
        return out
    labels = inst[fg].astype(np.int64)
    n = int(labels.max()) + 1
    rows, cols = np.nonzero(fg)
    count = np.maximum(np.bincount(labels, minlength=n), 1)
    for axis, coord in ((0, cols), (1, rows)):
        centre = np.bincount(labels, coord, minlength=n) / count
        d = coord - centre[labels]
        lo = np.zeros(n)
        hi = np.zeros(n)
        np.minimum.at(lo, labels, d)
        np.maximum.at(hi, labels, d)
        scale = np.where(d < 0, -lo[labels], hi[labels])
        out[axis][fg] = np.divide(d, scale, out=np.zeros_like(d), where=scale > 0)
    return out


def _band_weight(
    inst: np.ndarray, cell_weight: np.ndarray, band_px: float, bw: float
) -> np.ndarray:
    """Weight map: 1 on background, the cell's weight inside it, and a lower weight in a band of
    ``band_px`` around outlines of uncertain cells: ``w * (bw + (1 - bw) * w)`` (1 for w = 1)."""
    weight = np.ones(inst.shape, np.float32)
    fg = inst > 0
    weight[fg] = cell_weight[inst[fg]]
    if band_px <= 0 or not fg.any():
        return weight
    # Outline pixels: inside a cell, next to a pixel with another label (or background).
    padded = np.pad(inst, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    edge = fg & (
        (padded[:-2, 1:-1] != centre)
        | (padded[2:, 1:-1] != centre)
        | (padded[1:-1, :-2] != centre)
        | (padded[1:-1, 2:] != centre)
    )
    dist, (ri, ci) = ndi.distance_transform_edt(~edge, return_indices=True)
    band = dist <= band_px
    w = cell_weight[inst[ri[band], ci[band]]]
    weight[band] = np.minimum(weight[band], w * (bw + (1.0 - bw) * w))
    return weight


def _finish(
    inst: np.ndarray,
    inst_class: np.ndarray,
    inst_weight: np.ndarray,
    inst_class_weight: np.ndarray,
    band_px: float,
    boundary_weight: float,
    inst_probs: np.ndarray | None = None,
) -> Targets:
    inst = inst.astype(np.int32, copy=False)
    cls = inst_class.astype(np.uint8)[inst]
    weight = _band_weight(inst, inst_weight.astype(np.float32), band_px, boundary_weight)
    class_lut = inst_class_weight.astype(np.float32)
    class_lut[0] = 1.0
    probs = None if inst_probs is None else np.ascontiguousarray(inst_probs[1:], np.float32)
    return Targets(inst=inst, cls=cls, hv=hv_maps(inst), weight=weight,
                   cls_weight=class_lut[inst], class_probs=probs)  # fmt: skip


def rasterize_targets(
    labels,
    x0: float,
    y0: float,
    sx: float,
    sy: float,
    shape: tuple[int, int],
    classes: ClassTable,
    *,
    boundary_weight: float = 0.5,
    band_px: float = 2.0,
) -> Targets:
    """Targets for the tile of ``shape`` (H, W) model pixels at level-0 ``(x0, y0)``.

    ``labels`` is a LabelSet GeoDataFrame (level-0 polygons, ``image_class``, optional
    ``weight``, ``confidence`` and ``prob_<class>`` columns); only polygons its spatial index
    returns for the tile box are drawn. Classes not in ``classes`` (``unknown`` included) become 255. Larger nuclei are drawn
    first so a small overlapping one stays visible. ``weight`` (trust in the polygon): see
    :func:`_band_weight`; ``confidence`` (trust in the cell type) becomes ``cls_weight``; each
    missing = 1. ``prob_<class>`` columns for every class of ``classes`` become
    ``class_probs`` (else it is ``None``).
    """
    h, w = int(shape[0]), int(shape[1])
    if LabelCols.IMAGE_CLASS not in labels.columns:
        raise InputError(None, f"LabelSet lacks the '{LabelCols.IMAGE_CLASS}' column")
    tile_box = shapely.box(x0, y0, x0 + w * sx, y0 + h * sy)
    idx = np.sort(labels.sindex.query(tile_box, predicate="intersects"))
    inst = np.zeros((h, w), np.int32)
    n = len(idx)
    inst_class = np.zeros(n + 1, np.uint8)
    inst_weight = np.ones(n + 1, np.float32)
    inst_class_weight = np.ones(n + 1, np.float32)
    prob_cols = LabelCols.class_probs(classes.names)
    has_probs = all(c in labels.columns for c in prob_cols)
    inst_probs = np.zeros((n + 1, classes.n_classes), np.float32) if has_probs else None
    if n == 0:
        return _finish(inst, inst_class, inst_weight, inst_class_weight, band_px, boundary_weight,
                       inst_probs)  # fmt: skip
    sub = labels.iloc[idx]
    if has_probs:
        inst_probs[1:] = np.clip(sub[prob_cols].fillna(0.0).to_numpy(np.float32), 0.0, 1.0)
    inst_class[1:] = np.asarray(classes.ids_of(sub[LabelCols.IMAGE_CLASS].astype(str)), np.uint8)
    for lut, col in ((inst_weight, LabelCols.WEIGHT), (inst_class_weight, LabelCols.CONFIDENCE)):
        if col in sub.columns:
            lut[1:] = np.clip(sub[col].fillna(1.0).to_numpy(np.float32), 0.0, 1.0)
    geoms = shapely.transform(np.asarray(sub.geometry.values), lambda c: (c - (x0, y0)) / (sx, sy))
    # Multipolygons -> parts sharing their row's instance id; draw exteriors largest first.
    parts, part_of = shapely.get_parts(geoms, return_index=True)
    keep = shapely.get_type_id(parts) == 3  # polygons only
    parts, part_of = parts[keep], part_of[keep]
    order = np.argsort(-shapely.area(parts), kind="stable")
    rings = shapely.get_exterior_ring(parts[order])
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    splits = np.searchsorted(ring_of, np.arange(1, len(rings)))
    # One skimage call per polygon in this tile (a few hundred at most): pixel centres inside.
    for k, xy in zip(part_of[order], np.split(coords, splits), strict=True):
        rr, cc = draw_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=(h, w))
        inst[rr, cc] = k + 1
    inst, *per_instance = _relabel(inst, inst_class, inst_weight, inst_class_weight, inst_probs)
    return _finish(inst, *per_instance[:3], band_px, boundary_weight, per_instance[3])


def _relabel(inst: np.ndarray, *per_instance: np.ndarray | None):
    """Renumber present instances 1..N and carry their per-instance values (rows) along;
    ``None`` stays ``None``."""
    present = np.unique(inst)
    present = present[present > 0]
    lut = np.zeros(len(per_instance[0]), np.int32)
    lut[present] = np.arange(1, len(present) + 1)
    keep = np.concatenate([[0], present])
    return lut[inst], *(None if v is None else v[keep] for v in per_instance)


def targets_from_instances(
    inst: np.ndarray,
    inst_class: Mapping[int, int] | np.ndarray,
    *,
    inst_weight: Mapping[int, float] | np.ndarray | None = None,
    class_weight: Mapping[int, float] | np.ndarray | None = None,
    boundary_weight: float = 0.5,
    band_px: float = 2.0,
) -> Targets:
    """Targets from a manual instance map (e.g. CoNSeP): ``inst_class`` maps label -> class id
    (0..K or 255; an array indexed by label or a dict); unlisted labels get 255.
    ``inst_weight`` / ``class_weight``: per-label outline / class trust (default 1)."""
    inst = np.asarray(inst).astype(np.int32)
    n = int(inst.max()) + 1
    cls_lut = np.full(n, IGNORE_CLASS, np.uint8)
    cls_lut[0] = 0
    w_lut = np.ones(n, np.float32)
    cw_lut = np.ones(n, np.float32)
    for lut, src in ((cls_lut, inst_class), (w_lut, inst_weight), (cw_lut, class_weight)):
        if src is None:
            continue
        if isinstance(src, Mapping):
            keys = np.fromiter(src.keys(), np.int64, len(src))
            vals = np.fromiter(src.values(), np.float64, len(src))
        else:
            src = np.asarray(src)
            keys, vals = np.arange(len(src)), src
        ok = (keys > 0) & (keys < n)
        lut[keys[ok]] = vals[ok]
    return _finish(inst, cls_lut, w_lut, cw_lut, band_px, boundary_weight)

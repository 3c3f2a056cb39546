"""Making ST labels honest about what ST does not know, one training tile at a time.

Spatial transcriptomics misses nuclei (cells dropped by QC, nuclei outside the panel's reach,
segmentation misses) and its outlines sit a few µm off the H&E nucleus after registration.
Taught as they are, the missed nuclei become *background* and the shifted outlines blur every
boundary. Two repairs use the H&E itself, through the classical hematoxylin detector
(:func:`~wsi_stnuc.evaluation.baseline.classical_instances`):

* **snap**: each ST nucleus is moved (translated, shape kept) onto the H&E nucleus it overlaps
  most, when that nucleus is close (``max_shift``) and is the best match of no other ST
  nucleus; the outline is the ST one, only its position comes from the image;
* **ignore**: H&E nuclei that no ST nucleus touches get loss weight 0 (neither nucleus nor
  background), with a small margin.

Both work on raster instance maps of one tile with numpy (a contingency table via bincount),
with no per-nucleus Python loop.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _overlaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Contingency table ``(a.max()+1) x (b.max()+1)`` of pixel counts (row/col 0: background)."""
    na, nb = int(a.max()) + 1, int(b.max()) + 1
    flat = a.astype(np.int64).ravel() * nb + b.astype(np.int64).ravel()
    return np.bincount(flat, minlength=na * nb).reshape(na, nb)


def _centroids(inst: np.ndarray, n: int) -> np.ndarray:
    """``n x 2`` (x, y) pixel-centre centroids of labels 0..n-1 (NaN where absent)."""
    rows, cols = np.indices(inst.shape)
    flat = inst.ravel()
    count = np.bincount(flat, minlength=n).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.bincount(flat, cols.ravel() + 0.5, minlength=n) / count
        cy = np.bincount(flat, rows.ravel() + 0.5, minlength=n) / count
    return np.column_stack([cx, cy])


def snap_offsets(
    st_inst: np.ndarray,
    he_inst: np.ndarray,
    max_shift_px: float,
    min_overlap: float = 0.1,
    min_shift_px: float = 0.5,
) -> np.ndarray:
    """Per ST instance (row ``i`` for id ``i``; row 0 unused) the ``(dx, dy)`` in tile pixels
    that moves it onto its H&E nucleus, or ``(0, 0)`` where none qualifies.

    The match is the H&E instance with the largest overlap; it must cover ``min_overlap`` of the
    ST nucleus' area, lie within ``max_shift_px`` (centroid to centroid), and be claimed by no
    other ST nucleus (two ST nuclei on one H&E blob stay where they are). Shifts under
    ``min_shift_px`` are raster noise between the two outlines and stay 0.
    """
    n_st = int(st_inst.max()) + 1
    offsets = np.zeros((n_st, 2), np.float64)
    if n_st <= 1 or he_inst.max() == 0:
        return offsets
    table = _overlaps(st_inst, he_inst)[:, 1:]  # drop H&E background
    best = table.argmax(1)
    ov = table[np.arange(n_st), best]
    area = np.bincount(st_inst.ravel(), minlength=n_st)
    claims = np.bincount(best[1:][ov[1:] > 0], minlength=table.shape[1])
    ok = (ov > 0) & (ov >= min_overlap * np.maximum(area, 1)) & (claims[best] == 1)
    ok[0] = False
    n_he = int(he_inst.max()) + 1
    st_c = _centroids(st_inst, n_st)
    he_c = _centroids(he_inst, n_he)[best + 1]
    shift = he_c - st_c
    dist = np.hypot(shift[:, 0], shift[:, 1])
    ok &= (dist <= max_shift_px) & (dist >= min_shift_px)
    offsets[ok] = shift[ok]
    return offsets


def unlabelled_nuclei_mask(st_inst: np.ndarray, he_inst: np.ndarray, margin_px: int = 1):
    """Boolean mask of H&E nuclei that no ST nucleus touches, grown by ``margin_px``.

    Those pixels are likely nuclei that ST did not report; they are not background. Pixels
    inside an ST nucleus are never in the mask.
    """
    if he_inst.max() == 0:
        return np.zeros(he_inst.shape, bool)
    touched = np.unique(he_inst[(st_inst > 0) & (he_inst > 0)])
    lone = np.ones(int(he_inst.max()) + 1, bool)
    lone[0] = False
    lone[touched] = False
    mask = lone[he_inst]
    if margin_px > 0 and mask.any():
        mask = ndi.binary_dilation(mask, iterations=int(margin_px))
    return mask & (st_inst == 0)


def shift_geometries(geoms: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Translate each geometry by its own ``(dx, dy)`` row of ``offsets`` (vectorised)."""
    import shapely

    coords, owner = shapely.get_coordinates(geoms, return_index=True)
    # set_coordinates works in place on the array it is given: give it a copy.
    return shapely.set_coordinates(np.array(geoms, copy=True), coords + offsets[owner])


def refine_tile_targets(
    labels,
    image: np.ndarray,
    x0: float,
    y0: float,
    sx: float,
    sy: float,
    classes,
    mpp: float,
    *,
    snap_um: float | None = None,
    ignore_unlabelled: bool = False,
):
    """Targets of one tile with the ST labels snapped to H&E nuclei and/or the unlabelled H&E
    nuclei ignored (see the module doc); ``mpp`` is the tile's µm/px. Returns
    ``(Targets, stats)`` with ``stats`` counting ST nuclei snapped and pixels ignored."""
    import shapely

    from wsi_stnuc.evaluation.baseline import classical_instances
    from wsi_stnuc.training.targets import rasterize_targets

    shape = image.shape[:2]
    targets = rasterize_targets(labels, x0, y0, sx, sy, shape, classes)
    stats = {"snapped": 0, "ignored_px": 0}
    if not snap_um and not ignore_unlabelled:
        return targets, stats
    he = classical_instances(image, mpp)
    if snap_um:
        offsets = snap_offsets(targets.inst, he, snap_um / mpp)
        moved = np.any(offsets[1:] != 0, axis=1)
        if moved.any():
            box = shapely.box(x0, y0, x0 + shape[1] * sx, y0 + shape[0] * sy)
            idx = np.sort(labels.sindex.query(box, predicate="intersects"))
            sub = labels.iloc[idx].copy()
            # Instance i is row i - 1 of the tile's labels; rows drawn nowhere keep (0, 0).
            level0 = np.zeros((len(idx), 2))
            level0[: len(offsets) - 1] = offsets[1:] * (sx, sy)
            sub = sub.set_geometry(shift_geometries(np.asarray(sub.geometry.values), level0))
            targets = rasterize_targets(sub, x0, y0, sx, sy, shape, classes)
            stats["snapped"] = int(moved.sum())
    if ignore_unlabelled:
        mask = unlabelled_nuclei_mask(targets.inst, he)
        targets.weight[mask] = 0.0
        stats["ignored_px"] = int(mask.sum())
    return targets, stats

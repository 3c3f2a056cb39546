"""Nucleus segmentation, detection and classification metrics, computed as the field does.

Definitions (each function's docstring cites its source):

* **PQ** (Kirillov et al., CVPR 2019; for nuclei Graham et al., HoVer-Net, MedIA 2019):
  objects match when IoU > 0.5 (then the match is unique), ``DQ = TP / (TP + FP/2 + FN/2)``,
  ``SQ = mean IoU of the matches``, ``PQ = DQ * SQ``.
* **mPQ** (Gamper et al., PanNuke 2020): per image and per class PQ (on the class's own instances),
  averaged over the images where the class is present, then over the classes.
  **mPQ+** (Graham et al., CoNIC 2021/2024): TP/FP/FN/sum-IoU of each class pooled over all
  images, then PQ per class, then averaged over the classes.
* **AJI** (Kumar et al., IEEE TMI 2017): each true object is paired with the prediction of
  highest IoU; ``AJI = sum |G & S| / (sum |G | S| + area of the predictions never paired)``.
* **Dice**: binary foreground ``2 |T & P| / (|T| + |P|)``.
* **Detection F1** (Sirinukunwattana et al. 2016; HoVer-Net): centroids paired one-to-one within
  a radius (12 px at 40x = 3 µm), ``F1 = 2 TP / (2 TP + FP + FN)``.
* **F_c** (HoVer-Net eq. 13, as its reference code computes it): per class ``c`` on the detection
  pairs, ``F_c = 2 TP_c / (2 TP_c + 2 FP_c + 2 FN_c + FP_d,c + FN_d,c)``.

Raster and polygon inputs share one core: an :class:`Overlap` table (object areas + the sparse
list of intersecting pairs with their intersection areas), built from label images with one
joint ``np.unique`` over pixels or from polygons with an STRtree and shapely's vectorised
intersection. Every metric is computed from that table with numpy, never with a loop over
nuclei, so the same code serves a 256 px patch and a slide with a million nuclei.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

from wsi_stnuc.classes import IGNORE_CLASS, UNKNOWN

# --------------------------------------------------------------------------------------------
# Overlap table


@dataclass(frozen=True)
class Overlap:
    """Areas of two sets of objects and their pairwise intersections (sparse).

    ``true_ids``/``pred_ids`` are the objects' labels (instance ids or row positions);
    ``pair_true``/``pair_pred`` index into them; ``inter`` is each pair's intersection area.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    pair_true: np.ndarray
    pair_pred: np.ndarray
    inter: np.ndarray

    @property
    def union(self) -> np.ndarray:
        return self.true_area[self.pair_true] + self.pred_area[self.pair_pred] - self.inter

    @property
    def iou(self) -> np.ndarray:
        union = self.union
        return np.divide(self.inter, union, out=np.zeros_like(union, dtype=float), where=union > 0)

    def subset(self, true_keep: np.ndarray, pred_keep: np.ndarray) -> Overlap:
        """The table restricted to the objects where the boolean masks are True."""
        t_new = np.cumsum(true_keep) - 1
        p_new = np.cumsum(pred_keep) - 1
        pk = true_keep[self.pair_true] & pred_keep[self.pair_pred]
        return Overlap(
            self.true_ids[true_keep],
            self.pred_ids[pred_keep],
            self.true_area[true_keep],
            self.pred_area[pred_keep],
            t_new[self.pair_true[pk]],
            p_new[self.pair_pred[pk]],
            self.inter[pk],
        )


def _check_inst(name: str, inst: np.ndarray) -> np.ndarray:
    inst = np.asarray(inst)
    if inst.ndim != 2 or not np.issubdtype(inst.dtype, np.integer):
        raise ValueError(f"{name} must be a 2-D integer label image, got {inst.dtype} {inst.shape}")
    return inst


def overlap_table(true_inst: np.ndarray, pred_inst: np.ndarray) -> Overlap:
    """Overlap table of two label images (0 = background), from one joint ``np.unique``.

    Areas are pixel counts; ids need not be contiguous.
    """
    true_inst = _check_inst("true_inst", true_inst)
    pred_inst = _check_inst("pred_inst", pred_inst)
    if true_inst.shape != pred_inst.shape:
        raise ValueError(f"label images differ in shape: {true_inst.shape} vs {pred_inst.shape}")
    t = true_inst.ravel()
    p = pred_inst.ravel()
    t_fg, p_fg = t != 0, p != 0
    true_ids, t_idx, t_area = np.unique(t[t_fg], return_inverse=True, return_counts=True)
    pred_ids, p_idx, p_area = np.unique(p[p_fg], return_inverse=True, return_counts=True)
    # Object index per pixel (-1 = background) so both maps can be read at the shared pixels.
    t_full = np.full(t.shape, -1, dtype=np.int64)
    p_full = np.full(p.shape, -1, dtype=np.int64)
    t_full[t_fg] = t_idx
    p_full[p_fg] = p_idx
    both = t_fg & p_fg
    key = t_full[both] * max(len(pred_ids), 1) + p_full[both]
    pairs, inter = np.unique(key, return_counts=True)
    n_p = max(len(pred_ids), 1)
    return Overlap(
        true_ids,
        pred_ids,
        t_area.astype(float),
        p_area.astype(float),
        pairs // n_p,
        pairs % n_p,
        inter.astype(float),
    )


# --------------------------------------------------------------------------------------------
# Matching


def _optimal_pairs(
    rows: np.ndarray, cols: np.ndarray, cost: np.ndarray, unmatched_cost: float
) -> np.ndarray:
    """Min-cost one-to-one matching on a sparse bipartite graph; returns a mask over the edges.

    Edges ``(rows[k], cols[k])`` must be distinct.
    Leaving an object unmatched costs ``unmatched_cost``, so with every edge cheaper than
    ``2 * unmatched_cost`` the matching takes as many edges as it can, then the cheapest ones.
    Solved exactly by scipy's sparse LAPJV (``min_weight_full_bipartite_matching``) on the usual
    augmented graph: each object may match its own dummy, and two dummies may match wherever a
    real edge joins their objects, so a full matching always exists.
    """
    if len(rows) == 0:
        return np.zeros(0, dtype=bool)
    ur, ri = np.unique(rows, return_inverse=True)
    uc, ci = np.unique(cols, return_inverse=True)
    a, b = len(ur), len(uc)
    eps = 1e-9 * max(unmatched_cost, 1.0)  # sparse matrices drop exact zeros
    ar_a, ar_b = np.arange(a), np.arange(b)
    r = np.concatenate([ri, ar_a, a + ar_b, a + ci])
    c = np.concatenate([ci, b + ar_a, ar_b, b + ri])
    w = np.concatenate(
        [
            np.asarray(cost, dtype=float) + eps,
            np.full(a, unmatched_cost),
            np.full(b, unmatched_cost),
            np.full(len(ri), eps),
        ]
    )
    graph = sparse.csr_matrix((w, (r, c)), shape=(a + b, a + b))
    row_ind, col_ind = sparse.csgraph.min_weight_full_bipartite_matching(graph)
    match = np.full(a + b, -1, dtype=np.int64)
    match[row_ind] = col_ind
    return match[ri] == ci


def _match_iou(ov: Overlap, iou_threshold: float) -> np.ndarray:
    """Indices of the matched pairs of ``ov``: IoU above the threshold, one-to-one.

    At a threshold >= 0.5 the pairs above it are unique when each side's objects do not overlap
    among themselves (Kirillov et al., Thm. 1); otherwise (or for lower thresholds) the
    one-to-one matching that maximises the number of matches, then the summed IoU, is used.
    """
    iou = ov.iou
    cand = np.flatnonzero(iou > iou_threshold)
    pt, pp = ov.pair_true[cand], ov.pair_pred[cand]
    if len(np.unique(pt)) == len(pt) and len(np.unique(pp)) == len(pp):
        return cand
    return cand[_optimal_pairs(pt, pp, 1.0 - iou[cand], unmatched_cost=1.0)]


def _pq_from_counts(tp: float, fp: float, fn: float, sum_iou: float) -> dict:
    if tp + fp + fn == 0:  # nothing to find and nothing found: undefined, not perfect
        return {"pq": np.nan, "dq": np.nan, "sq": np.nan, "tp": 0, "fp": 0, "fn": 0}
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = sum_iou / tp if tp else 0.0
    return {"pq": dq * sq, "dq": dq, "sq": sq, "tp": int(tp), "fp": int(fp), "fn": int(fn)}


def _pq_stats(ov: Overlap, iou_threshold: float) -> tuple[int, int, int, float]:
    m = _match_iou(ov, iou_threshold)
    tp = len(m)
    return tp, len(ov.pred_ids) - tp, len(ov.true_ids) - tp, float(ov.iou[m].sum())


def pq_from_overlap(ov: Overlap, iou_threshold: float = 0.5) -> dict:
    """PQ, DQ, SQ, TP, FP, FN of an :class:`Overlap` table (see :func:`panoptic_quality`)."""
    return _pq_from_counts(*_pq_stats(ov, iou_threshold))


def panoptic_quality(
    true_inst: np.ndarray, pred_inst: np.ndarray, iou_threshold: float = 0.5
) -> dict:
    """Panoptic quality of two instance maps (Kirillov et al. 2019; HoVer-Net's ``get_fast_pq``).

    Returns ``dict(pq, dq, sq, tp, fp, fn)`` with ``DQ = TP / (TP + FP/2 + FN/2)``,
    ``SQ = sum IoU / TP`` (0 without matches), ``PQ = DQ * SQ``. A pair matches at
    IoU > ``iou_threshold``. All values are NaN when both maps are empty.
    """
    return pq_from_overlap(overlap_table(true_inst, pred_inst), iou_threshold)


def aji_from_overlap(ov: Overlap) -> float:
    """Aggregated Jaccard Index of an :class:`Overlap` table (see :func:`aji`)."""
    n_t = len(ov.true_ids)
    inter_sum = 0.0
    union_sum = 0.0
    used = np.zeros(len(ov.pred_ids), dtype=bool)
    if len(ov.inter):
        iou = ov.iou
        # Best pair per true object: sort by (true, -iou) and take each group's first row.
        order = np.lexsort((-iou, ov.pair_true))
        first = order[np.r_[True, np.diff(ov.pair_true[order]) != 0]]
        inter_sum = float(ov.inter[first].sum())
        union_sum = float(ov.union[first].sum())
        used[ov.pair_pred[first]] = True
        has_pair = np.zeros(n_t, dtype=bool)
        has_pair[ov.pair_true[first]] = True
    else:
        has_pair = np.zeros(n_t, dtype=bool)
    union_sum += float(ov.true_area[~has_pair].sum()) + float(ov.pred_area[~used].sum())
    if union_sum == 0:
        return np.nan
    return inter_sum / union_sum


def aji(true_inst: np.ndarray, pred_inst: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al., IEEE TMI 2017), as HoVer-Net's ``get_fast_aji``.

    Each true nucleus G is paired with the predicted nucleus S of highest IoU (a prediction may
    serve several true nuclei); ``C = sum |G & S|``, ``U = sum |G | S|`` (``|G|`` for a true
    nucleus that overlaps nothing) plus the area of every prediction that no true nucleus chose;
    ``AJI = C / U``. NaN when both maps are empty.
    """
    return aji_from_overlap(overlap_table(true_inst, pred_inst))


def aji_plus_from_overlap(ov: Overlap) -> float:
    """AJI+ of an :class:`Overlap` table (see :func:`aji_plus`)."""
    iou = ov.iou
    # Leaving an object unpaired costs 1/2, a pair costs 1 - IoU: the total is
    # (objects / 2 - sum of paired IoU), so the optimum maximises the summed IoU.
    chosen = _optimal_pairs(ov.pair_true, ov.pair_pred, 1.0 - iou, unmatched_cost=0.5)
    paired_t = np.zeros(len(ov.true_ids), dtype=bool)
    paired_p = np.zeros(len(ov.pred_ids), dtype=bool)
    paired_t[ov.pair_true[chosen]] = True
    paired_p[ov.pair_pred[chosen]] = True
    inter_sum = float(ov.inter[chosen].sum())
    union_sum = float(ov.union[chosen].sum())
    union_sum += float(ov.true_area[~paired_t].sum()) + float(ov.pred_area[~paired_p].sum())
    return inter_sum / union_sum if union_sum else np.nan


def aji_plus(true_inst: np.ndarray, pred_inst: np.ndarray) -> float:
    """AJI+ (Graham et al., HoVer-Net code ``get_fast_aji_plus``): AJI with a one-to-one
    pairing that maximises the summed IoU, so one prediction cannot be counted for two true
    nuclei (AJI's over-penalisation of merges is removed). NaN when both maps are empty."""
    return aji_plus_from_overlap(overlap_table(true_inst, pred_inst))


def dice(true_inst: np.ndarray, pred_inst: np.ndarray) -> float:
    """Binary foreground Dice ``2 |T & P| / (|T| + |P|)``; NaN when both are empty."""
    t = _check_inst("true_inst", true_inst) != 0
    p = _check_inst("pred_inst", pred_inst) != 0
    if t.shape != p.shape:
        raise ValueError(f"label images differ in shape: {t.shape} vs {p.shape}")
    denom = int(t.sum()) + int(p.sum())
    return 2.0 * int((t & p).sum()) / denom if denom else np.nan


# --------------------------------------------------------------------------------------------
# Detection and classification


def detection_f1(true_centroids: np.ndarray, pred_centroids: np.ndarray, radius_px: float) -> dict:
    """Detection F1, centroids paired one-to-one within ``radius_px`` (as HoVer-Net's
    ``pair_coordinates``).

    Candidate pairs come from a KD-tree (distance <= radius); the pairing maximises the number
    of pairs, then minimises their summed distance (exact sparse assignment, see
    :func:`_optimal_pairs`). Returns ``dict(f1, precision, recall, tp, fp, fn, pairs)`` where
    ``pairs`` is an ``(TP, 2)`` int array of (true index, pred index). Scores are NaN when
    undefined (no objects on the relevant side).
    """
    t = np.asarray(true_centroids, dtype=float).reshape(-1, 2)
    p = np.asarray(pred_centroids, dtype=float).reshape(-1, 2)
    if radius_px <= 0:
        raise ValueError(f"radius_px must be positive, got {radius_px}")
    pairs = np.zeros((0, 2), dtype=np.int64)
    if len(t) and len(p):
        sdm = cKDTree(t).sparse_distance_matrix(cKDTree(p), radius_px, output_type="ndarray")
        if len(sdm):
            rows, cols, dist = sdm["i"], sdm["j"], sdm["v"]
            chosen = _optimal_pairs(rows, cols, dist, unmatched_cost=float(radius_px))
            pairs = np.stack([rows[chosen], cols[chosen]], axis=1).astype(np.int64)
            pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
    tp = len(pairs)
    fp, fn = len(p) - tp, len(t) - tp
    denom = 2 * tp + fp + fn
    return {
        "f1": 2 * tp / denom if denom else np.nan,
        "precision": tp / (tp + fp) if tp + fp else np.nan,
        "recall": tp / (tp + fn) if tp + fn else np.nan,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "pairs": pairs,
    }


def class_f1(
    pairs: np.ndarray,
    true_cls: np.ndarray,
    pred_cls: np.ndarray,
    classes: Sequence,
    *,
    ignore: Sequence = (IGNORE_CLASS, UNKNOWN),
) -> dict:
    """Per-class F_c of HoVer-Net (Graham et al. 2019, eq. 13; reference ``_f1_type``).

    ``pairs`` (n x 2) index the detection-matched (true, pred) objects in ``true_cls`` and
    ``pred_cls`` (one class per object); objects in no pair are the detection FN (true) and FP
    (pred). For class ``c``, on the pairs where either side is ``c``: ``TP_c`` both ``c``,
    ``FP_c`` only pred ``c``, ``FN_c`` only true ``c``; ``FP_d``/``FN_d`` unpaired pred/true of
    class ``c``. ``F_c = 2 TP_c / (2 TP_c + 2 FP_c + 2 FN_c + FP_d + FN_d)`` (the TN term of the
    paper's formula is zero on these pairs, as in its code). Pairs whose true class is in
    ``ignore`` (``unknown``) are dropped: an abstained reference has no class to be right about.
    Returns ``{class: F_c}`` (NaN where the class occurs on neither side) plus ``"acc"``, the
    classification accuracy on the kept pairs.
    """
    true_cls = np.asarray(true_cls)
    pred_cls = np.asarray(pred_cls)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    paired_t = np.zeros(len(true_cls), dtype=bool)
    paired_p = np.zeros(len(pred_cls), dtype=bool)
    paired_t[pairs[:, 0]] = True
    paired_p[pairs[:, 1]] = True
    pt, pp = true_cls[pairs[:, 0]], pred_cls[pairs[:, 1]]
    keep = np.ones(len(pt), dtype=bool)
    for value in ignore:
        keep &= np.asarray(pt != value, dtype=bool).reshape(len(pt))
    pt, pp = pt[keep], pp[keep]
    unpaired_t, unpaired_p = true_cls[~paired_t], pred_cls[~paired_p]
    out: dict = {}
    for c in classes:  # a handful of classes; each step is vectorised
        tp_c = int(((pt == c) & (pp == c)).sum())
        fp_c = int(((pt != c) & (pp == c)).sum())
        fn_c = int(((pt == c) & (pp != c)).sum())
        fp_d = int((unpaired_p == c).sum())
        fn_d = int((unpaired_t == c).sum())
        denom = 2 * tp_c + 2 * fp_c + 2 * fn_c + fp_d + fn_d
        out[c] = 2 * tp_c / denom if denom else np.nan
    out["acc"] = float((pt == pp).mean()) if len(pt) else np.nan
    return out


# --------------------------------------------------------------------------------------------
# Helpers on label images


def instance_centroids(inst: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
    """Centroids ``(x, y)`` in pixel units (pixel centres at ``+0.5``) of the labels ``ids``
    (default: all non-zero labels, sorted). Vectorised with ``np.unique`` + ``bincount``."""
    inst = _check_inst("inst", inst)
    flat = inst.ravel()
    fg = np.flatnonzero(flat)
    labels, idx = np.unique(flat[fg], return_inverse=True)
    rows, cols = np.divmod(fg, inst.shape[1])
    n = np.bincount(idx, minlength=len(labels)).astype(float)
    cx = np.bincount(idx, weights=cols + 0.5, minlength=len(labels)) / np.maximum(n, 1)
    cy = np.bincount(idx, weights=rows + 0.5, minlength=len(labels)) / np.maximum(n, 1)
    xy = np.stack([cx, cy], axis=1)
    if ids is None:
        return xy
    pos = np.searchsorted(labels, ids)
    if np.any(pos >= len(labels)) or np.any(labels[np.minimum(pos, len(labels) - 1)] != ids):
        raise ValueError("instance_centroids: some ids are not in the label image")
    return xy[pos]


def instance_classes(
    inst: np.ndarray, cls: np.ndarray, ids: np.ndarray | None = None
) -> np.ndarray:
    """Class of each instance ``ids`` (default: sorted non-zero labels of ``inst``).

    ``cls`` is either a class map of ``inst``'s shape (majority vote of the instance's pixels,
    background pixels excluded) or a per-instance vector where instance ``i`` has class
    ``cls[i - 1]`` (CoNSeP's ``inst_type``).
    """
    inst = _check_inst("inst", inst)
    cls = np.asarray(cls)
    if ids is None:
        ids = np.unique(inst[inst != 0])
    ids = np.asarray(ids)
    if cls.ndim == 1:
        if len(ids) and ids.max() > len(cls):
            raise ValueError(f"per-instance classes cover ids 1..{len(cls)}, map has {ids.max()}")
        return cls[ids - 1].astype(np.int64)
    if cls.shape != inst.shape:
        raise ValueError(f"class map shape {cls.shape} differs from instance map {inst.shape}")
    flat, c = inst.ravel(), cls.ravel().astype(np.int64)
    m = flat != 0
    labels, idx = np.unique(flat[m], return_inverse=True)
    n_c = int(c.max()) + 1 if c.size else 1
    votes = np.bincount(idx * n_c + c[m], minlength=len(labels) * n_c).reshape(-1, n_c)
    if n_c > 1:
        votes[:, 0] = np.where(votes[:, 1:].sum(1) > 0, 0, votes[:, 0])  # prefer a labelled class
    by_label = votes.argmax(axis=1)
    pos = np.searchsorted(labels, ids)
    return by_label[np.minimum(pos, len(labels) - 1)] if len(labels) else np.zeros(0, np.int64)


# --------------------------------------------------------------------------------------------
# Multi-class PQ


def _class_pq_stats(
    ov: Overlap, t_cls: np.ndarray, p_cls: np.ndarray, c, iou_threshold: float
) -> tuple[int, int, int, float]:
    # Class-specific matching: only the class's own true and predicted instances (PanNuke, CoNIC).
    return _pq_stats(ov.subset(t_cls == c, p_cls == c), iou_threshold)


def multiclass_pq(
    overlaps: Sequence[Overlap],
    true_classes: Sequence[np.ndarray],
    pred_classes: Sequence[np.ndarray],
    classes: Sequence,
    iou_threshold: float = 0.5,
) -> dict:
    """mPQ (PanNuke) and mPQ+ (CoNIC) over a set of images.

    One :class:`Overlap` per image (from :func:`overlap_table` or :func:`match_polygons`'s
    table) with each object's class aligned to ``true_ids``/``pred_ids``. Per class ``c``, the
    class's true and predicted instances are matched on their own.

    * ``mpq``: per image, ``PQ_c`` where the image has true instances of ``c`` (PanNuke's
      evaluation skips images without them); averaged over images, then over classes.
    * ``mpq_plus``: TP/FP/FN and summed IoU of ``c`` pooled over the images,
      ``PQ_c = sum IoU / (TP + FP/2 + FN/2)``, averaged over classes (CoNIC).

    Returns ``dict(mpq, mpq_plus, per_class={c: dict(pq, pq_plus, dq_plus, sq_plus, tp, fp,
    fn)})``; a class with no instance on either side is NaN and left out of both means.
    """
    if not (len(overlaps) == len(true_classes) == len(pred_classes)):
        raise ValueError("multiclass_pq: one overlap table and class vectors per image")
    per_class: dict = {}
    for c in classes:
        img_pq = []
        tot = np.zeros(4)
        for ov, tc, pc in zip(overlaps, true_classes, pred_classes, strict=True):
            stats = _class_pq_stats(ov, np.asarray(tc), np.asarray(pc), c, iou_threshold)
            tot += stats
            if stats[0] + stats[2] > 0:  # the image has true instances of c
                img_pq.append(_pq_from_counts(*stats)["pq"])
        pooled = _pq_from_counts(*tot)
        per_class[c] = {
            "pq": float(np.mean(img_pq)) if img_pq else np.nan,
            "pq_plus": pooled["pq"],
            "dq_plus": pooled["dq"],
            "sq_plus": pooled["sq"],
            "tp": pooled["tp"],
            "fp": pooled["fp"],
            "fn": pooled["fn"],
        }
    mpq = [v["pq"] for v in per_class.values() if not np.isnan(v["pq"])]
    mpq_plus = [v["pq_plus"] for v in per_class.values() if not np.isnan(v["pq_plus"])]
    return {
        "mpq": float(np.mean(mpq)) if mpq else np.nan,
        "mpq_plus": float(np.mean(mpq_plus)) if mpq_plus else np.nan,
        "per_class": per_class,
    }


def multiclass_pq_images(
    true_insts: Sequence[np.ndarray],
    pred_insts: Sequence[np.ndarray],
    true_classes: Sequence[np.ndarray],
    pred_classes: Sequence[np.ndarray],
    classes: Sequence,
    iou_threshold: float = 0.5,
) -> dict:
    """:func:`multiclass_pq` over label images; classes as class maps or per-instance vectors
    (see :func:`instance_classes`)."""
    overlaps, t_cls, p_cls = [], [], []
    for t, p, tc, pc in zip(true_insts, pred_insts, true_classes, pred_classes, strict=True):
        ov = overlap_table(t, p)
        overlaps.append(ov)
        t_cls.append(instance_classes(t, tc, ov.true_ids))
        p_cls.append(instance_classes(p, pc, ov.pred_ids))
    return multiclass_pq(overlaps, t_cls, p_cls, classes, iou_threshold)


# --------------------------------------------------------------------------------------------
# Bundles


def _radius_px(radius_um: float, mpp: float) -> float:
    if mpp is None or mpp <= 0:
        raise ValueError(f"mpp (µm per pixel) must be positive to convert the radius, got {mpp}")
    return radius_um / mpp


@dataclass(frozen=True)
class Comparison:
    """One image (or slide) of reference vs prediction, reduced to what every metric needs:
    the overlap table, the centroids (px) and classes of both sides aligned with its ids, and
    the foreground Dice."""

    overlap: Overlap
    true_xy: np.ndarray
    pred_xy: np.ndarray
    true_cls: np.ndarray | None = None
    pred_cls: np.ndarray | None = None
    dice: float = np.nan

    @property
    def has_classes(self) -> bool:
        return self.true_cls is not None and self.pred_cls is not None


def compare_instances(
    true_inst: np.ndarray,
    pred_inst: np.ndarray,
    true_cls: np.ndarray | None = None,
    pred_cls: np.ndarray | None = None,
) -> Comparison:
    """:class:`Comparison` of two label images; classes as in :func:`instance_classes`."""
    ov = overlap_table(true_inst, pred_inst)
    t_cls = p_cls = None
    if true_cls is not None and pred_cls is not None:
        t_cls = instance_classes(true_inst, true_cls, ov.true_ids)
        p_cls = instance_classes(pred_inst, pred_cls, ov.pred_ids)
    return Comparison(
        ov,
        instance_centroids(true_inst, ov.true_ids),
        instance_centroids(pred_inst, ov.pred_ids),
        t_cls,
        p_cls,
        dice(true_inst, pred_inst),
    )


def _mean(values: list[float]) -> float:
    vals = np.asarray(values, dtype=float)
    vals = vals[~np.isnan(vals)]
    return float(vals.mean()) if len(vals) else np.nan


def summarize(
    comparisons: Sequence[Comparison],
    *,
    mpp: float | Sequence[float],
    radius_um: float = 3.0,
    classes: Sequence | None = None,
    iou_threshold: float = 0.5,
) -> dict:
    """Every metric over one or more images, aggregated as the literature does.

    PQ, DQ, SQ, AJI, AJI+ and Dice: mean over images (CoNSeP/MoNuSeg/PanNuke practice; for one
    image, its value); tp/fp/fn: summed. Detection F1 and F_c: pairs pooled over images
    (HoVer-Net). mPQ (PanNuke) and mPQ+ (CoNIC) as in :func:`multiclass_pq`. ``mpp`` is one
    value or one per comparison (the radius is in µm). Class figures need classes on both
    sides of every comparison; ``classes`` defaults to the reference classes other than
    background and ``unknown``.
    """
    mpps = np.broadcast_to(np.asarray(mpp, dtype=float), (len(comparisons),))
    per_image: dict[str, list] = {k: [] for k in ("pq", "dq", "sq", "aji", "aji_plus", "dice")}
    counts = np.zeros(6, dtype=np.int64)  # tp, fp, fn, tp_d, fp_d, fn_d
    pairs, t_cls, p_cls, t_off, p_off = [], [], [], 0, 0
    for comp, m in zip(comparisons, mpps, strict=True):  # a loop over images, not nuclei
        ov = comp.overlap
        pq = pq_from_overlap(ov, iou_threshold)
        for key, value in (
            *((k, pq[k]) for k in ("pq", "dq", "sq")),
            ("aji", aji_from_overlap(ov)),
            ("aji_plus", aji_plus_from_overlap(ov)),
            ("dice", comp.dice),
        ):
            per_image[key].append(value)
        det = detection_f1(comp.true_xy, comp.pred_xy, _radius_px(radius_um, m))
        counts += (pq["tp"], pq["fp"], pq["fn"], det["tp"], det["fp"], det["fn"])
        pairs.append(det["pairs"] + (t_off, p_off))
        t_off += len(ov.true_ids)
        p_off += len(ov.pred_ids)
        t_cls.append(comp.true_cls)
        p_cls.append(comp.pred_cls)
    out: dict = {k: _mean(v) for k, v in per_image.items()}
    tp_d, fp_d, fn_d = (int(c) for c in counts[3:])
    out.update(tp=int(counts[0]), fp=int(counts[1]), fn=int(counts[2]))
    out.update(
        f1d=2 * tp_d / (2 * tp_d + fp_d + fn_d) if tp_d + fp_d + fn_d else np.nan,
        precision_d=tp_d / (tp_d + fp_d) if tp_d + fp_d else np.nan,
        recall_d=tp_d / (tp_d + fn_d) if tp_d + fn_d else np.nan,
        tp_d=tp_d, fp_d=fp_d, fn_d=fn_d,
        radius_um=radius_um, iou_threshold=iou_threshold,
        mpp=float(mpps[0]) if len(mpps) else np.nan,
        n_true=t_off, n_pred=p_off, n_images=len(comparisons),
    )  # fmt: skip
    if comparisons and all(c.has_classes for c in comparisons):
        all_t, all_p = np.concatenate(t_cls), np.concatenate(p_cls)
        if classes is None:
            classes = sorted(set(np.unique(all_t).tolist()) - _IGNORED_VALUES)
        fc = class_f1(np.concatenate(pairs), all_t, all_p, classes)
        out["acc_c"] = fc.pop("acc")
        out["f1c"] = fc
        mc = multiclass_pq([c.overlap for c in comparisons], t_cls, p_cls, classes, iou_threshold)
        out["mpq"] = mc["mpq"]
        out["mpq_plus"] = mc["mpq_plus"]
        out["pq_per_class"] = {c: float(v["pq_plus"]) for c, v in mc["per_class"].items()}
    return out


def evaluate_instances(
    true_inst: np.ndarray,
    pred_inst: np.ndarray,
    true_cls: np.ndarray | None = None,
    pred_cls: np.ndarray | None = None,
    *,
    mpp: float,
    radius_um: float = 3.0,
    classes: Sequence | None = None,
    iou_threshold: float = 0.5,
) -> dict:
    """All metrics for one pair of label images (:func:`compare_instances` + :func:`summarize`).

    ``true_cls``/``pred_cls`` (optional) are class maps or per-instance vectors (see
    :func:`instance_classes`). The detection radius is in µm and converted with ``mpp``.
    Returns a flat dict: pq, dq, sq, tp, fp, fn, aji, aji_plus, dice, f1d, precision_d,
    recall_d, tp_d, fp_d, fn_d, n_true, n_pred and, with classes, f1c {class: F_c}, acc_c, mpq,
    mpq_plus, pq_per_class.
    """
    comp = compare_instances(true_inst, pred_inst, true_cls, pred_cls)
    return summarize(
        [comp], mpp=mpp, radius_um=radius_um, classes=classes, iou_threshold=iou_threshold
    )


# --------------------------------------------------------------------------------------------
# Polygons (slide-scale tables)


def _valid_geoms(gdf, name: str) -> np.ndarray:
    import shapely

    geoms = np.asarray(gdf.geometry.values, dtype=object)
    bad = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    if bad.any():
        raise ValueError(f"{name}: {int(bad.sum())} rows have an empty or missing geometry")
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():  # self-touching outlines from tracing are common; repair, do not drop
        geoms = geoms.copy()
        geoms[invalid] = shapely.make_valid(geoms[invalid])
    return geoms


def _polygon_overlap(tg: np.ndarray, pg: np.ndarray) -> Overlap:
    import shapely

    if len(tg) and len(pg):
        ti, pi = shapely.STRtree(pg).query(tg, predicate="intersects")
    else:
        ti = pi = np.zeros(0, dtype=np.int64)
    # GEOS intersection of the candidate pairs is the cost centre (~10^4 pairs/s/core).
    inter = shapely.area(shapely.intersection(tg[ti], pg[pi])) if len(ti) else np.zeros(0)
    pos = inter > 0  # touching outlines intersect with zero area
    return Overlap(
        np.arange(len(tg)),
        np.arange(len(pg)),
        shapely.area(tg).astype(float),
        shapely.area(pg).astype(float),
        np.asarray(ti[pos], dtype=np.int64),
        np.asarray(pi[pos], dtype=np.int64),
        np.asarray(inter[pos], dtype=float),
    )


def _match_result(ov: Overlap, iou_threshold: float) -> dict:
    m = _match_iou(ov, iou_threshold)
    return {
        "overlap": ov,
        "pairs": np.stack([ov.pair_true[m], ov.pair_pred[m]], axis=1),
        "iou": ov.iou[m],
    }


def match_polygons(true_gdf, pred_gdf, iou_threshold: float = 0.5) -> dict:
    """Match two polygon tables (level-0 px) by IoU; the polygon version of PQ matching.

    Intersecting pairs come from ``shapely.STRtree.query(predicate="intersects")``, their areas
    from vectorised ``shapely.intersection``; no per-polygon Python loop. Returns
    ``dict(overlap=Overlap (ids = row positions), pairs=(n, 2) matched row positions,
    iou=(n,) their IoU)``.
    """
    tg = _valid_geoms(true_gdf, "reference polygons")
    pg = _valid_geoms(pred_gdf, "predicted polygons")
    return _match_result(_polygon_overlap(tg, pg), iou_threshold)


def _centroids_xy(geoms: np.ndarray) -> np.ndarray:
    import shapely

    return shapely.get_coordinates(shapely.centroid(geoms)).reshape(-1, 2)


def compare_polygons(
    true_gdf, pred_gdf, class_column: str | tuple[str, str] | None = None
) -> Comparison:
    """:class:`Comparison` of two polygon tables (see :func:`evaluate_polygons`)."""
    tg = _valid_geoms(true_gdf, "reference polygons")
    pg = _valid_geoms(pred_gdf, "predicted polygons")
    ov = _polygon_overlap(tg, pg)
    t_cls = p_cls = None
    if class_column is not None:
        t_col, p_col = (
            (class_column, class_column) if isinstance(class_column, str) else class_column
        )
        for gdf, col, name in ((true_gdf, t_col, "reference"), (pred_gdf, p_col, "prediction")):
            if col not in gdf.columns:
                raise ValueError(f"{name} table has no class column {col!r}")
        t_cls = class_values(true_gdf[t_col])
        p_cls = class_values(pred_gdf[p_col])
    return Comparison(
        ov,
        _centroids_xy(tg),
        _centroids_xy(pg),
        t_cls,
        p_cls,
        _polygon_dice(tg, pg, ov),
    )


def _disjoint(geoms: np.ndarray) -> np.ndarray:
    """``geoms`` with each group of mutually overlapping polygons replaced by its union
    (touching outlines do not count); the same array when nothing overlaps."""
    import shapely

    # "intersects" plus an area test is ~10x faster in GEOS than the "overlaps" predicate.
    i, j = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    i, j = i[i < j], j[i < j]
    keep = shapely.area(shapely.intersection(geoms[i], geoms[j])) > 0 if len(i) else []
    if not np.any(keep):
        return geoms
    n = len(geoms)
    graph = sparse.coo_matrix((np.ones(keep.sum()), (i[keep], j[keep])), shape=(n, n))
    _, comp = sparse.csgraph.connected_components(graph, directed=False)
    grouped = np.bincount(comp)[comp] > 1
    order = np.flatnonzero(grouped)[np.argsort(comp[grouped], kind="stable")]
    groups = np.split(order, np.flatnonzero(np.diff(comp[order])) + 1)
    # One union per overlapping group: rare in segmentations, a few in hand annotations.
    merged = [shapely.union_all(geoms[g]) for g in groups]
    return np.concatenate([geoms[~grouped], np.asarray(merged, dtype=object)])


def _polygon_dice(tg: np.ndarray, pg: np.ndarray, ov: Overlap) -> float:
    """Foreground Dice of two polygon sets, exact even where a set overlaps itself."""
    dt, dp = _disjoint(tg), _disjoint(pg)
    if dt is not tg or dp is not pg:
        ov = _polygon_overlap(dt, dp)
    total = float(ov.true_area.sum() + ov.pred_area.sum())
    return 2.0 * float(ov.inter.sum()) / total if total else np.nan


def evaluate_polygons(
    true_gdf,
    pred_gdf,
    *,
    mpp: float,
    radius_um: float = 3.0,
    class_column: str | tuple[str, str] | None = None,
    classes: Sequence | None = None,
    iou_threshold: float = 0.5,
) -> dict:
    """All metrics for two polygon tables (GeoDataFrames in level-0 px, e.g. a NucleusTable
    against a LabelSet).

    Same keys as :func:`evaluate_instances`. ``class_column`` names the class column of both
    tables (or a ``(true_column, pred_column)`` pair); classes may be names or ids, ``unknown`` /
    missing reference classes are ignored in F_c.
    """
    comp = compare_polygons(true_gdf, pred_gdf, class_column)
    return summarize(
        [comp], mpp=mpp, radius_um=radius_um, classes=classes, iou_threshold=iou_threshold
    )


_IGNORED_VALUES = {IGNORE_CLASS, 0, UNKNOWN, "", "None"}


def class_values(series) -> np.ndarray:
    """A pandas class column as a numpy vector: text stays text (missing -> ``unknown``),
    numbers become int64 (missing -> ``IGNORE_CLASS``)."""
    if series.dtype.kind in "iu":
        return series.to_numpy(dtype=np.int64)
    if series.dtype.kind == "f":
        return series.fillna(IGNORE_CLASS).to_numpy().astype(np.int64)
    return series.astype(object).where(series.notna(), UNKNOWN).astype(str).to_numpy()

"""How much to trust each transcriptomic label as supervision for the image.

Two things go wrong with a label transferred from spatial transcriptomics: the cell type is
uncertain (low typing confidence), or the polygon does not sit on a nucleus in the H&E (residual
registration error, a nucleus out of the H&E section's plane). The first only makes the class
doubtful: the cell keeps its segmentation weight but its class becomes ``unknown``. The second
makes the whole label doubtful: its weight drops with the hematoxylin evidence under it.

Hematoxylin evidence (``h_support``): mean hematoxylin optical density
(:func:`wsi_stnuc.stain.hematoxylin_od`, Ruifrok-Johnston) inside the polygon minus
the mean over a ring around it (pixels of other labelled nuclei excluded), read at ``mpp``.
A polygon on a nucleus is darker in hematoxylin than its surroundings; one on background,
stroma or lumen is not.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import shapely

from wsi_stnuc.classes import UNKNOWN
from wsi_stnuc.errors import InputError
from wsi_stnuc.formats import LabelCols
from wsi_stnuc.stain import hematoxylin_od
from wsi_stnuc.taxonomy.crops import SlideLike, iter_region_groups, open_reader

log = logging.getLogger(__name__)

# Floor of the contrast scale, in hematoxylin OD (wsi_stnuc.stain: dark chromatin reads
# ~0.5-0.9, stroma ~0.1-0.2, glass ~0.02). A slide-median reference alone fails when many
# polygons are off their nuclei (a badly registered slide); contrast below 0.05 OD is not a
# nucleus on any H&E we have seen.
MIN_H_SCALE = 0.05


def _region_sums(
    points: np.ndarray, geoms: np.ndarray, values: np.ndarray, mask: np.ndarray | None
):
    """Per-geometry sum and count of ``values`` at the ``points`` inside it (optionally masked)."""
    tree = shapely.STRtree(geoms)
    pt_idx, g_idx = tree.query(points, predicate="within")
    if mask is not None:
        keep = mask[pt_idx]
        pt_idx, g_idx = pt_idx[keep], g_idx[keep]
    sums = np.bincount(g_idx, weights=values[pt_idx], minlength=len(geoms))
    counts = np.bincount(g_idx, minlength=len(geoms))
    return sums, counts, pt_idx


def hematoxylin_support(
    polygons: np.ndarray,
    slide: SlideLike,
    *,
    mpp: float = 0.5,
    ring_um: float = 3.0,
    gap_um: float = 0.5,
    tile_px: int = 512,
) -> pd.DataFrame:
    """Mean hematoxylin OD inside each polygon and in a ring around it, read at ``mpp``.

    ``polygons``: shapely polygons in level-0 px. Returns ``h_inside``, ``h_ring``,
    ``h_support`` (= inside - ring; NaN where a polygon covers no pixel centre at ``mpp``).
    """
    polys = np.asarray(polygons, dtype=object)
    n = len(polys)
    inside_sum, inside_n = np.zeros(n), np.zeros(n)
    ring_sum, ring_n = np.zeros(n), np.zeros(n)
    if n:
        if np.any(shapely.is_missing(polys)) or not np.all(shapely.is_valid_input(polys)):
            raise InputError(getattr(slide, "path", slide), "labels contain missing geometries")
        reader, owned = open_reader(slide)
        try:
            centroids = shapely.get_coordinates(shapely.centroid(polys))
            mpp_x, mpp_y = reader.mpp
            sx, sy = mpp / mpp_x, mpp / mpp_y
            bounds = shapely.bounds(polys)
            half = max(
                np.max(np.maximum(centroids[:, 0] - bounds[:, 0], bounds[:, 2] - centroids[:, 0]))
                / sx,
                np.max(np.maximum(centroids[:, 1] - bounds[:, 1], bounds[:, 3] - centroids[:, 1]))
                / sy,
            )
            margin = int(math.ceil(half + ring_um / mpp)) + 2
            all_tree = shapely.STRtree(polys)
            for g in iter_region_groups(
                reader, centroids, mpp=mpp, margin_px=margin, tile_px=tile_px
            ):
                h_img = hematoxylin_od(g.image).ravel()
                rows, cols = g.image.shape[:2]
                # pixel centres of the region, in level-0 px
                vv, uu = np.mgrid[0:rows, 0:cols]
                pts = shapely.points(
                    g.x0 + (uu.ravel() + 0.5) * g.sx, g.y0 + (vv.ravel() + 0.5) * g.sy
                )
                box = shapely.box(g.x0, g.y0, g.x0 + cols * g.sx, g.y0 + rows * g.sy)
                near = all_tree.query(box)
                _, _, occupied_pts = _region_sums(pts, polys[near], h_img, None)
                free = np.ones(len(pts), bool)
                free[occupied_pts] = False
                own = polys[g.index]
                s, c, _ = _region_sums(pts, own, h_img, None)
                inside_sum[g.index], inside_n[g.index] = s, c
                outer = shapely.buffer(own, (ring_um + gap_um) / mpp_x)
                inner = shapely.buffer(own, gap_um / mpp_x)
                rings = shapely.difference(outer, inner)
                s, c, _ = _region_sums(pts, rings, h_img, free)
                ring_sum[g.index], ring_n[g.index] = s, c
        finally:
            if owned and hasattr(reader, "close"):
                reader.close()
    with np.errstate(invalid="ignore", divide="ignore"):
        h_in = np.where(inside_n > 0, inside_sum / np.maximum(inside_n, 1), np.nan)
        h_ring = np.where(ring_n > 0, ring_sum / np.maximum(ring_n, 1), np.nan)
    return pd.DataFrame({"h_inside": h_in, "h_ring": h_ring, "h_support": h_in - h_ring})


def label_weights(
    labels,
    slide_path: SlideLike,
    *,
    min_confidence: float = 0.5,
    mpp: float = 0.5,
    h_scale: float | None = None,
    min_h_weight: float = 0.25,
    ring_um: float = 3.0,
) -> pd.DataFrame:
    """Per-cell supervision weights for a LabelSet on its slide.

    Returns a DataFrame (index = ``labels.index``) with ``weight`` (0-1: the label's own weight,
    if any, times ``clip(h_support / h_scale, 0, 1)``), ``h_support`` and ``image_class``
    (``unknown`` where ``confidence < min_confidence`` or the hematoxylin factor is below
    ``min_h_weight``: such a polygon is probably not on the nucleus its type belongs to).
    ``h_scale`` defaults to half the median ``h_support`` of the slide's cells (at least
    :data:`MIN_H_SCALE`): a polygon with half the typical nucleus contrast gets full weight.
    The LabelSet's ``prob_<class>`` columns (soft class targets), if any, come back with the
    rows of polygons off their nucleus zeroed: low typing confidence alone keeps them, as the
    probabilities already say how doubtful the type is.
    """
    for col in (LabelCols.IMAGE_CLASS, LabelCols.CONFIDENCE):
        if col not in labels.columns:
            raise InputError(
                getattr(slide_path, "path", slide_path), f"labels lack a '{col}' column"
            )
    h = hematoxylin_support(
        np.asarray(labels.geometry.values), slide_path, mpp=mpp, ring_um=ring_um
    )
    support = h["h_support"].to_numpy()
    if h_scale is None:
        med = np.nanmedian(support) if np.any(np.isfinite(support)) else np.nan
        h_scale = max(0.5 * med, MIN_H_SCALE) if np.isfinite(med) else MIN_H_SCALE
        log.info("label weights: h_scale %.4f (median h_support %.4f)", h_scale, med)
    if h_scale <= 0:
        raise InputError(None, f"h_scale must be positive, got {h_scale}")
    w_h = np.clip(np.nan_to_num(support, nan=0.0) / h_scale, 0.0, 1.0)
    base = (
        labels[LabelCols.WEIGHT].fillna(1.0).to_numpy(dtype=np.float64)
        if LabelCols.WEIGHT in labels.columns
        else np.ones(len(labels))
    )
    confidence = labels[LabelCols.CONFIDENCE].fillna(0.0).to_numpy(dtype=np.float64)
    off_nucleus = w_h < min_h_weight
    image_class = labels[LabelCols.IMAGE_CLASS].astype(str).to_numpy().copy()
    image_class[(confidence < min_confidence) | off_nucleus] = UNKNOWN
    out = pd.DataFrame(
        {
            LabelCols.WEIGHT: (base * w_h).astype(np.float32),
            "h_support": support.astype(np.float32),
            LabelCols.IMAGE_CLASS: image_class,
        },
        index=labels.index,
    )
    for col in labels.columns:
        if isinstance(col, str) and col.startswith(LabelCols.CLASS_PROB_PREFIX):
            out[col] = np.where(off_nucleus, 0.0, labels[col].to_numpy(np.float32))
    return out

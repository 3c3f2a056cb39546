"""Ownership stitching: each nucleus belongs to exactly one tile (ARCHITECTURE.md contract).

A tile is read with a halo around its core. An instance found in the tile is kept iff its
centroid (level-0, from the instance's pixels) lies in the tile's core box, half-open
(``x0 <= cx < x1``, ``y0 <= cy < y1``). Cores tile the plane, so exactly one tile owns each
nucleus; with a halo wider than the largest nucleus an owned nucleus is never cut, and the
centroid of a cut fragment lies in the halo, never in the core. No merging pass, O(n).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy import ndimage as ndi
from skimage.measure import find_contours

from wsi_stnuc.formats import NucleusCols

# Tile-grid column and attribute names (DESIGN.md "Tile grid").
CORE_BOX = ("core_x0", "core_y0", "core_x1", "core_y1")
READ_ORIGIN = ("read_x0", "read_y0")


def owned_mask(centroids: np.ndarray, core_box: Sequence[float]) -> np.ndarray:
    """Boolean mask of ``N x 2`` level-0 centroids (x, y) inside the half-open core box."""
    c = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
    x0, y0, x1, y1 = (float(v) for v in core_box)
    return (c[:, 0] >= x0) & (c[:, 0] < x1) & (c[:, 1] >= y0) & (c[:, 1] < y1)


owned = owned_mask


def label_centroids(inst: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Pixel centroids (x, y) of ``labels`` in ``inst`` with the pixel-corner convention."""
    flat = inst.ravel()
    n = int(inst.max()) + 1
    area = np.maximum(np.bincount(flat, minlength=n), 1)
    rows, cols = np.indices(inst.shape)
    cx = np.bincount(flat, cols.ravel(), minlength=n) / area + 0.5
    cy = np.bincount(flat, rows.ravel(), minlength=n) / area + 0.5
    labels = np.asarray(labels, dtype=np.int64)
    return np.stack([cx[labels], cy[labels]], axis=1)


def _contour_rings(inst: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outer contour of each label as one flat vertex array (x, y model px) + ring offsets.

    One ``find_contours`` per label on its bounding-box crop (from ``ndi.find_objects``):
    the work per nucleus is proportional to its own size, not to the tile's. The 0.5 iso-line
    of the padded mask runs along the pixel edges (cutting corners diagonally), so the polygon
    hugs the pixels.
    """
    slices = ndi.find_objects(inst)
    coords: list[np.ndarray] = []
    for lab in labels:
        sl = slices[lab - 1] if lab - 1 < len(slices) else None
        if sl is None:
            coords.append(np.zeros((0, 2)))
            continue
        crop = np.pad(inst[sl] == lab, 1).astype(np.float32)
        contours = find_contours(crop, 0.5)
        # several contours: holes or split fragments; keep the longest (the outline)
        ring = max(contours, key=len)
        # (row, col) of pixel centres in the padded crop -> (x, y) with pixel-corner origin
        coords.append(ring[:, ::-1] + (sl[1].start - 0.5, sl[0].start - 0.5))
    lengths = np.array([len(c) for c in coords], dtype=np.int64)
    flat = np.concatenate(coords) if coords else np.zeros((0, 2))
    return flat, lengths


def instances_to_polygons(
    inst: np.ndarray,
    x0: float,
    y0: float,
    sx: float,
    sy: float,
    *,
    labels: np.ndarray | None = None,
    simplify: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Polygons (level-0 px) of the instances of a label image read at ``(x0, y0)``, scale
    ``(sx, sy)`` level-0 px per model px.

    Returns ``(labels, polygons)``: the label ids (all non-zero labels, or ``labels``) and a
    shapely array. Vertices are lightly simplified (``simplify`` model px, topology kept).
    """
    inst = np.asarray(inst)
    if labels is None:
        labels = np.unique(inst)
        labels = labels[labels > 0]
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return labels, np.array([], dtype=object)
    flat, lengths = _contour_rings(inst, labels)
    flat = flat * (sx, sy) + (x0, y0)
    valid = lengths >= 4
    polys = np.full(len(labels), None, dtype=object)
    if valid.any():
        keep = np.repeat(valid, lengths)
        ring_ids = np.repeat(np.arange(int(valid.sum())), lengths[valid])
        rings = shapely.linearrings(flat[keep], indices=ring_ids)
        polys[valid] = shapely.polygons(rings)
    if simplify > 0:
        polys = shapely.simplify(polys, simplify * min(sx, sy), preserve_topology=True)
    return labels, polys


def stitch_tile(
    inst: np.ndarray,
    info: pd.DataFrame,
    tile_row: Mapping,
    grid_attrs: Mapping,
    *,
    simplify: float = 0.25,
) -> gpd.GeoDataFrame:
    """The nuclei one tile owns, as a GeoDataFrame in level-0 pixels.

    ``inst`` is the tile's label image at model resolution, ``info`` the per-instance table of
    :func:`wsi_stnuc.model.postprocess.heads_to_instances` (``label`` plus any per-instance
    columns, centroids in model px), ``tile_row`` one row of the tile grid and ``grid_attrs``
    the grid's ``attrs`` (``sx``, ``sy``). Output columns: ``tile_id``, ``label`` (in the
    tile), ``centroid_x``/``centroid_y`` (level-0), the other ``info`` columns, ``geometry``.
    """
    sx, sy = float(grid_attrs["sx"]), float(grid_attrs["sy"])
    rx, ry = (float(tile_row[k]) for k in READ_ORIGIN)
    info = info.reset_index(drop=True)
    labels = info["label"].to_numpy(dtype=np.int64)
    if {NucleusCols.CENTROID_X, NucleusCols.CENTROID_Y} <= set(info.columns):
        c_model = info[[NucleusCols.CENTROID_X, NucleusCols.CENTROID_Y]].to_numpy(np.float64)
    else:
        c_model = label_centroids(inst, labels)
    c_level0 = c_model * (sx, sy) + (rx, ry)
    keep = owned_mask(c_level0, [tile_row[k] for k in CORE_BOX])
    kept = info.loc[keep].drop(
        columns=[NucleusCols.CENTROID_X, NucleusCols.CENTROID_Y], errors="ignore"
    )
    _, polys = instances_to_polygons(inst, rx, ry, sx, sy, labels=labels[keep], simplify=simplify)
    out = pd.DataFrame(
        {
            NucleusCols.TILE_ID: np.full(int(keep.sum()), int(tile_row[NucleusCols.TILE_ID])),
            NucleusCols.CENTROID_X: c_level0[keep, 0],
            NucleusCols.CENTROID_Y: c_level0[keep, 1],
        }
    )
    out = pd.concat([out, kept.reset_index(drop=True)], axis=1)
    return gpd.GeoDataFrame(out, geometry=gpd.GeoSeries(polys, index=out.index))

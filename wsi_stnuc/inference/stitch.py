"""Ownership stitching: each nucleus belongs to exactly one tile (docs/DESIGN.md, "Ownership stitching").

A tile is read with a halo around its core. An instance found in the tile is kept iff its
centroid (level-0, from the instance's pixels) lies in the tile's core box, half-open
(``x0 <= cx < x1``, ``y0 <= cy < y1``). Cores tile the plane, so exactly one tile owns each
nucleus; with a halo wider than the largest nucleus an owned nucleus is never cut, and the
centroid of a cut fragment lies in the halo, never in the core. No merging pass, O(n).

That holds for every object the model emits, not only for nuclei smaller than the halo: an
instance whose bounding box is wider or taller than the halo (model px) is dropped in every
tile (:func:`size_guard`). An owned instance that reaches the read window's edge spans from
that edge to its centroid in the core, so its box exceeds the halo: whatever a tile keeps, it
saw whole, and a tissue block too big for the halo is dropped however the slide is tiled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy import ndimage as ndi

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


def size_guard(
    inst: np.ndarray,
    labels: np.ndarray,
    *,
    max_extent: int | None,
    area_px: tuple[float, float] | None = None,
) -> np.ndarray:
    """Mask of ``labels`` whose bounding box fits ``max_extent`` px on both axes and whose
    pixel area lies in ``area_px = (min, max)`` (model px; None: no such limit)."""
    labels = np.asarray(labels, dtype=np.int64)
    keep = np.ones(len(labels), bool)
    if len(labels) == 0:
        return keep
    if area_px is not None:
        area = np.bincount(inst.ravel(), minlength=int(labels.max()) + 1)[labels]
        keep &= (area >= area_px[0]) & (area <= area_px[1])
    if max_extent is not None:
        rows, cols = np.indices(inst.shape)
        extent = [
            ndi.maximum(ax, inst, labels) - ndi.minimum(ax, inst, labels) + 1
            for ax in (rows, cols)
        ]  # two axes, each one C pass over the tile
        keep &= (np.asarray(extent[0]) <= max_extent) & (np.asarray(extent[1]) <= max_extent)
    return keep


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


# skimage's marching-squares table (_find_contours_cy, fully_connected="low") for a square
# with corner bits ul=1, ur=2, ll=4, lr=8: (from, to) edge midpoints of its one or two
# segments; 0 top, 1 bottom, 2 left, 3 right; -1 none.
_SEG = np.full((16, 2, 2), -1, np.int64)
for _case, _segs in {
    1: [(0, 2)], 2: [(3, 0)], 3: [(3, 2)], 4: [(2, 1)], 5: [(0, 1)], 6: [(3, 0), (2, 1)],
    7: [(3, 1)], 8: [(1, 3)], 9: [(0, 2), (1, 3)], 10: [(1, 0)], 11: [(1, 2)], 12: [(2, 3)],
    13: [(0, 3)], 14: [(2, 0)],
}.items():  # fmt: skip
    _SEG[_case, : len(_segs)] = _segs
# edge midpoints in doubled coordinates relative to (2 * row, 2 * col) of the square
_DR = np.array([0, 2, 1, 1])
_DC = np.array([1, 1, 0, 2])


def _trace_contours(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The closed 0.5 iso-lines of a bool ``mask`` with a background border, vertex for
    vertex and in the order ``skimage.measure.find_contours(mask.astype(float), 0.5)`` gives
    them, as array operations instead of skimage's per-segment Python assembly.

    skimage links each square's segments in raster order; a ring is created by its first
    segment and closed by its last, so it starts at the last segment's end point and follows
    the segments' direction, and rings are listed by their first segment. Here the segments
    come from a table, successors from a point -> segment lookup, and first, last and the
    position along the ring by pointer jumping (log2 of the segment count rounds).

    Returns the (row, col) vertices of all rings, each closed (first vertex repeated last),
    and the number of vertices of each ring.
    """
    h, w = mask.shape
    m = mask.astype(np.uint8)
    case = m[:-1, :-1] + 2 * m[:-1, 1:] + 4 * m[1:, :-1] + 8 * m[1:, 1:]
    sq = np.flatnonzero((case != 0) & (case != 15))
    cs = case.ravel()[sq].astype(np.int64)
    per = 1 + ((cs == 6) | (cs == 9))
    seg_sq = np.repeat(np.arange(len(sq)), per)
    which = np.arange(len(seg_sq)) - np.repeat(np.cumsum(per) - per, per)
    r2, c2 = np.divmod(sq[seg_sq], w - 1)
    r2, c2 = 2 * r2, 2 * c2
    fr, to = _SEG[cs[seg_sq], which, 0], _SEG[cs[seg_sq], which, 1]
    stride = 2 * w + 1
    from_id = (r2 + _DR[fr]) * stride + c2 + _DC[fr]
    to_id = (r2 + _DR[to]) * stride + c2 + _DC[to]
    n = len(seg_sq)
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0, np.int64)
    seg_of = np.full((2 * h + 1) * stride, -1, np.int64)
    seg_of[from_id] = np.arange(n)
    succ = seg_of[to_id]
    # pointer jumping: last (= cycle id) and first segment of each cycle in raster order
    last = np.arange(n)
    first = np.arange(n)
    p = succ.copy()
    for _ in range(max(n, 1).bit_length()):
        last = np.maximum(last, last[p])
        first = np.minimum(first, first[p])
        p = p[p]
    # steps from each segment forward to its cycle's last segment
    is_last = last == np.arange(n)
    nxt = np.where(is_last, np.arange(n), succ)
    d = (~is_last).astype(np.int64)
    for _ in range(max(n, 1).bit_length()):
        d = d + d[nxt]
        nxt = nxt[nxt]
    length = d[succ[last]] + 1
    pos = (length - d) % length
    # rings in creation order (their first segment), each from to(last) round to to(last)
    order = np.lexsort((pos, first))
    ring_first = first[order]
    starts = np.flatnonzero(np.r_[True, ring_first[1:] != ring_first[:-1]])
    lengths = np.diff(np.r_[starts, n]) + 1
    ids = to_id[order]
    ids = np.insert(ids, np.r_[starts[1:], n], ids[starts])
    pts = np.stack(np.divmod(ids, stride), axis=1) / 2.0
    return pts, lengths


# Width (px) of the canvas rows that the nuclei's crops are packed into for one contour call.
_CANVAS_WIDTH = 1024


def _contour_rings(inst: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outer contour of each label as one flat vertex array (x, y model px) + ring offsets.

    Each label's bounding-box crop (from ``ndi.find_objects``), padded by one background
    pixel, is packed into one canvas that is traced once (:func:`_trace_contours`): the work
    per nucleus is proportional to its own size, not to the tile's, with no fixed cost per
    nucleus. The padding keeps the crops' rings apart, and the squares of each crop are met in
    the same relative order as in the crop alone, so each ring (start vertex and direction
    included) is the one ``find_contours`` gives for that crop. The 0.5 iso-line of the padded
    mask runs along the pixel edges (cutting corners diagonally), so the polygon hugs the
    pixels.
    """
    slices = ndi.find_objects(inst)
    boxes = [slices[lab - 1] if 0 < lab <= len(slices) else None for lab in labels]
    # shelf packing: (row, col) of each padded crop in the canvas
    places: list[tuple[int, int] | None] = []
    x = y = shelf_h = width = 0
    for sl in boxes:
        if sl is None:
            places.append(None)
            continue
        h, w = sl[0].stop - sl[0].start + 2, sl[1].stop - sl[1].start + 2
        if x > 0 and x + w > _CANVAS_WIDTH:
            x, y, shelf_h = 0, y + shelf_h, 0
        places.append((y, x))
        x += w
        shelf_h = max(shelf_h, h)
        width = max(width, x)
    coords: list[np.ndarray] = [np.zeros((0, 2))] * len(labels)
    if width:
        canvas = np.zeros((y + shelf_h, width), bool)
        owner = np.full(canvas.shape, -1, np.int64)
        for i, (lab, sl, at) in enumerate(zip(labels, boxes, places, strict=True)):
            if at is None:
                continue
            h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
            canvas[at[0] + 1 : at[0] + 1 + h, at[1] + 1 : at[1] + 1 + w] = inst[sl] == lab
            owner[at[0] : at[0] + h + 2, at[1] : at[1] + w + 2] = i
        pts, ring_len = _trace_contours(canvas)
        ring_start = np.cumsum(ring_len) - ring_len
        ring_owner = owner[pts[ring_start, 0].astype(np.int64), pts[ring_start, 1].astype(np.int64)]
        # several rings: holes or split fragments; keep the longest (the outline), the first
        # of equally long ones as max() does
        pick = np.lexsort((np.arange(len(ring_len)), -ring_len, ring_owner))
        pick = pick[np.r_[True, ring_owner[pick][1:] != ring_owner[pick][:-1]]]
        for r in pick:
            i = int(ring_owner[r])
            sl, (cy, cx) = boxes[i], places[i]
            ring = pts[ring_start[r] : ring_start[r] + ring_len[r]]
            # (row, col) of pixel centres in the canvas -> (x, y) with pixel-corner origin
            coords[i] = ring[:, ::-1] + (sl[1].start - 0.5 - cx, sl[0].start - 0.5 - cy)
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


def _cut_at_slide_edge(polys: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Outlines reaching past the slide (white padding a model may take for a nucleus) cut at
    its edge; the others are left untouched, vertex for vertex."""
    bounds = shapely.bounds(polys)
    out = (bounds[:, 0] < box[0]) | (bounds[:, 1] < box[1])
    out |= (bounds[:, 2] > box[2]) | (bounds[:, 3] > box[3])
    if out.any():
        cut = shapely.intersection(polys[out], shapely.box(*box))
        # a cut can split an outline or leave slivers: keep the largest polygon of each
        parts, owner = shapely.get_parts(cut, return_index=True)
        is_poly = shapely.get_type_id(parts) == 3
        parts, owner = parts[is_poly], owner[is_poly]
        order = np.lexsort((-shapely.area(parts), owner))
        first = np.unique(owner[order], return_index=True)[1]
        largest = np.full(len(cut), shapely.Polygon(), dtype=object)
        largest[owner[order][first]] = parts[order][first]
        polys = polys.copy()
        polys[out] = largest
    return polys


def stitch_tile(
    inst: np.ndarray,
    info: pd.DataFrame,
    tile_row: Mapping,
    grid_attrs: Mapping,
    *,
    simplify: float = 0.25,
    area_px: tuple[float, float] | None = None,
) -> gpd.GeoDataFrame:
    """The nuclei one tile owns, as a GeoDataFrame in level-0 pixels.

    ``inst`` is the tile's label image at model resolution, ``info`` the per-instance table of
    :func:`wsi_stnuc.model.postprocess.heads_to_instances` (``label`` plus any per-instance
    columns, centroids in model px), ``tile_row`` one row of the tile grid and ``grid_attrs``
    the grid's ``attrs`` (``sx``, ``sy``). Output columns: ``tile_id``, ``label`` (in the
    tile), ``centroid_x``/``centroid_y`` (level-0), the other ``info`` columns, ``geometry``.
    With ``slide_width``/``slide_height`` in the attrs nothing is placed beyond the slide: a
    nucleus whose centroid lies in the padding outside it belongs to no tile, and outlines are
    cut at the slide edge. Instances larger than the halo (``halo_px`` in the attrs) or outside
    ``area_px`` (min, max model px) are dropped first (:func:`size_guard`).
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
    core = [float(tile_row[k]) for k in CORE_BOX]
    slide_box = None
    if "slide_width" in grid_attrs:
        slide_box = (0.0, 0.0, float(grid_attrs["slide_width"]), float(grid_attrs["slide_height"]))
        core = [max(core[0], 0.0), max(core[1], 0.0), min(core[2], slide_box[2]),
                min(core[3], slide_box[3])]  # fmt: skip
    keep = owned_mask(c_level0, core)
    halo = grid_attrs.get("halo_px")
    if keep.any() and (halo is not None or area_px is not None):
        keep[keep] = size_guard(
            inst, labels[keep], max_extent=None if halo is None else int(halo), area_px=area_px
        )
    _, polys = instances_to_polygons(inst, rx, ry, sx, sy, labels=labels[keep], simplify=simplify)
    if slide_box is not None and len(polys):
        polys = _cut_at_slide_edge(polys, slide_box)
    columns = {
        NucleusCols.TILE_ID: np.full(int(keep.sum()), int(tile_row[NucleusCols.TILE_ID])),
        NucleusCols.CENTROID_X: c_level0[keep, 0],
        NucleusCols.CENTROID_Y: c_level0[keep, 1],
    }
    # one frame from column arrays: row selection and concat per column cost more than the
    # tile's contours
    for name in info.columns:
        if name not in (NucleusCols.CENTROID_X, NucleusCols.CENTROID_Y):
            columns[name] = info[name].array[keep]
    out = pd.DataFrame(columns)
    return gpd.GeoDataFrame(out, geometry=gpd.GeoSeries(polys, index=out.index))

"""Ownership stitching with an identity "model": tiled result == untiled result, exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import shapely
from skimage.segmentation import expand_labels, relabel_sequential

from wsi_stnuc.inference.stitch import (
    instances_to_polygons,
    label_centroids,
    owned_mask,
    stitch_tile,
)


def _label_image(size: int, radius: int, core: int, seed: int = 0) -> np.ndarray:
    """Random touching blobs plus 2x2 / 4x4 squares whose centroids sit exactly on core lines."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros((size, size), np.int32)
    pts = rng.integers(0, size, (size * size // (6 * radius * radius), 2))
    seeds[pts[:, 0], pts[:, 1]] = np.arange(1, len(pts) + 1)
    lab = expand_labels(seeds, radius)
    nxt = lab.max() + 1
    for k, c in enumerate(range(core, size - 4, core)):
        half = 1 + k % 2  # 2x2 and 4x4 squares: centroid (c, c2) exactly on a core boundary
        for c2 in (c, size // 2):
            lab[c2 - half : c2 + half, c - half : c + half] = nxt
            lab[c - half : c + half, c2 - half : c2 + half] = nxt + 1
            nxt += 2
    lab, _, _ = relabel_sequential(lab)
    return lab


def _grid(size: int, core: int, halo: int, s: float) -> tuple[pd.DataFrame, dict]:
    rows = []
    n = -(-size // core)
    for r in range(n):
        for c in range(n):
            x0, y0 = c * core * s, r * core * s
            rows.append(
                {"tile_id": len(rows), "row": r, "col": c,
                 "core_x0": x0, "core_y0": y0, "core_x1": x0 + core * s, "core_y1": y0 + core * s,
                 "read_x0": x0 - halo * s, "read_y0": y0 - halo * s}
            )  # fmt: skip
    return pd.DataFrame(rows), {"sx": s, "sy": s, "core_px": core, "halo_px": halo}


def _identity_tile(lab: np.ndarray, row, halo: int, read: int, s: float):
    """What a perfect model returns for the tile: the crop, relabelled 1..n, with its info."""
    y0, x0 = round(row["read_y0"] / s), round(row["read_x0"] / s)
    pad = np.pad(lab, read)
    crop = pad[y0 + read : y0 + 2 * read, x0 + read : x0 + 2 * read]
    crop, _, _ = relabel_sequential(crop)
    labels = np.arange(1, crop.max() + 1)
    c = label_centroids(crop, labels)
    info = pd.DataFrame({"label": labels, "centroid_x": c[:, 0], "centroid_y": c[:, 1]})
    info["det_prob"] = 1.0
    return crop, info


@pytest.mark.parametrize(
    ("core", "halo", "s"), [(64, 12, 1.0), (50, 20, 1.0), (96, 16, 2.0), (40, 11, 0.5)]
)
def test_tiled_equals_untiled(core, halo, s):
    size, radius = 240, 4  # largest blob < 2 * radius + 1 + squares of 4 < halo
    lab = _label_image(size, radius, core)
    labels, whole = instances_to_polygons(lab, 0.0, 0.0, s, s)
    whole_c = label_centroids(lab, labels) * s
    grid, attrs = _grid(size, core, halo, s)
    parts = []
    for _, row in grid.iterrows():
        inst, info = _identity_tile(lab, row, halo, core + 2 * halo, s)
        parts.append(stitch_tile(inst, info, row, attrs))
    tiled = pd.concat(parts, ignore_index=True)
    assert len(tiled) == len(labels)
    # match by centroid: every nucleus exactly once
    order_w = np.lexsort((whole_c[:, 0], whole_c[:, 1]))
    tc = tiled[["centroid_x", "centroid_y"]].to_numpy()
    order_t = np.lexsort((tc[:, 0], tc[:, 1]))
    np.testing.assert_allclose(tc[order_t], whole_c[order_w], atol=1e-9)
    tiled_polys = tiled.geometry.to_numpy()[order_t]
    assert shapely.equals_exact(tiled_polys, whole[order_w], 1e-9).all()
    assert shapely.is_valid(tiled_polys).all()


def test_owned_mask_half_open():
    c = np.array([[0, 0], [10, 5], [9.999, 9.999], [5, 10], [-1e-9, 3]])
    assert owned_mask(c, (0, 0, 10, 10)).tolist() == [True, False, True, False, False]
    # exactly one of four tiles sharing a corner owns a point on the corner
    corner = np.array([[10.0, 10.0]])
    boxes = [(0, 0, 10, 10), (10, 0, 20, 10), (0, 10, 10, 20), (10, 10, 20, 20)]
    assert sum(owned_mask(corner, b)[0] for b in boxes) == 1


def test_polygon_matches_pixels():
    lab = np.zeros((20, 30), np.int32)
    lab[2:8, 3:13] = 1  # 6 x 10 rectangle
    lab[10:15, 20:25] = 3
    labels, polys = instances_to_polygons(lab, 100.0, 50.0, 2.0, 1.0, simplify=0)
    assert labels.tolist() == [1, 3]
    minx, miny, maxx, maxy = shapely.bounds(polys[0])
    # the outline runs along the pixel edges (corners cut diagonally)
    assert (minx, miny, maxx, maxy) == (100 + 3 * 2, 50 + 2, 100 + 13 * 2, 50 + 8)
    assert shapely.area(polys[0]) == pytest.approx(60 * 2 - 4 * 0.125 * 2)
    c = shapely.centroid(polys)
    np.testing.assert_allclose(
        shapely.get_coordinates(c), label_centroids(lab, labels) * (2, 1) + (100, 50)
    )


def test_nothing_is_placed_beyond_the_slide():
    # A 100 x 80 slide, one tile reading from (-10, -10) at scale 1 with its core reaching
    # past the slide edge: a blob straddling the left edge, one lying wholly in the padding.
    inst = np.zeros((120, 140), np.int32)
    inst[40:60, 2:20] = 1  # level-0 x -8..10: centroid at x = 1 (on the slide)
    inst[40:60, 115:130] = 2  # level-0 x 105..120: beyond the slide's width of 100
    info = pd.DataFrame({"label": [1, 2]})
    row = {"tile_id": 0, "core_x0": 0.0, "core_y0": 0.0, "core_x1": 128.0, "core_y1": 128.0,
           "read_x0": -10.0, "read_y0": -10.0}  # fmt: skip
    attrs = {"sx": 1.0, "sy": 1.0, "slide_width": 100, "slide_height": 80}
    out = stitch_tile(inst, info, row, attrs, simplify=0)
    assert list(out["label"]) == [1]
    minx, miny, maxx, maxy = out.total_bounds
    assert minx == 0 and maxx == 10 and (miny, maxy) == (30, 50)
    assert out.geometry.is_valid.all() and (out.geometry.geom_type == "Polygon").all()
    # without slide extents (older grids) both are kept, uncut
    legacy = stitch_tile(inst, info, row, {"sx": 1.0, "sy": 1.0}, simplify=0)
    assert list(legacy["label"]) == [1, 2] and legacy.total_bounds[0] == -8

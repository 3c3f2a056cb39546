"""Per-nucleus morphology and stain features, vectorised over all nuclei of a tile.

Where each feature comes from, and why:

* ``area_um2``, ``perimeter_um``, ``solidity``: from the exported polygons (shapely array
  functions), so the numbers describe exactly the outline a user sees in QuPath; solidity is
  polygon area over convex-hull area.
* ``eccentricity``: from the second central moments of each nucleus' pixels (one
  ``np.bincount`` pass per moment over the tile, as ``regionprops`` defines it), in physical
  units so anisotropic pixels are handled. Polygon moments would need per-polygon loops.
* ``mean_hematoxylin_od``, ``mean_eosin_od``: label-wise means of the colour-deconvolved tile
  (:mod:`wsi_stnuc.stain`), again by ``np.bincount``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely

from wsi_stnuc.formats import NucleusCols
from wsi_stnuc.stain import eosin_od, hematoxylin_od

FEATURE_COLUMNS = (
    NucleusCols.AREA_UM2,
    NucleusCols.PERIMETER_UM,
    NucleusCols.ECCENTRICITY,
    NucleusCols.SOLIDITY,
    NucleusCols.MEAN_H_OD,
    NucleusCols.MEAN_E_OD,
)


def polygon_features(polygons: np.ndarray, mpp_x: float, mpp_y: float) -> pd.DataFrame:
    """Area (µm²), perimeter (µm) and solidity of level-0 polygons with ``mpp_x/y`` µm/px."""
    return pd.DataFrame(_polygon_columns(polygons, mpp_x, mpp_y))


def _polygon_columns(polygons: np.ndarray, mpp_x: float, mpp_y: float) -> dict[str, np.ndarray]:
    polygons = np.asarray(polygons, dtype=object)
    # scale to µm first so that anisotropic pixels give true lengths
    um = shapely.transform(polygons, lambda xy: xy * (mpp_x, mpp_y))
    area = shapely.area(um)
    hull = shapely.area(shapely.convex_hull(um))
    with np.errstate(invalid="ignore", divide="ignore"):
        solidity = np.where(hull > 0, area / hull, np.nan)
    return {
        NucleusCols.AREA_UM2: area,
        NucleusCols.PERIMETER_UM: shapely.length(um),
        NucleusCols.SOLIDITY: solidity,
    }


def _label_sums(flat: np.ndarray, weights: np.ndarray | None, n: int) -> np.ndarray:
    # float even with no pixel at all, where bincount would return integers
    return np.bincount(flat, weights, minlength=n).astype(np.float64, copy=False)


def pixel_features(
    inst: np.ndarray, labels: np.ndarray, rgb: np.ndarray, px_um_x: float, px_um_y: float
) -> pd.DataFrame:
    """Eccentricity and mean H / E optical density of ``labels`` in one tile.

    ``inst`` and ``rgb`` are the tile's label image and pixels at model resolution;
    ``px_um_x/y`` the physical size of one model pixel (µm).
    """
    return pd.DataFrame(_pixel_columns(inst, labels, rgb, px_um_x, px_um_y))


def _pixel_columns(
    inst: np.ndarray, labels: np.ndarray, rgb: np.ndarray, px_um_x: float, px_um_y: float
) -> dict[str, np.ndarray]:
    inst = np.asarray(inst)
    if rgb.shape[:2] != inst.shape:
        raise ValueError(f"label image {inst.shape} and tile {rgb.shape[:2]} differ in size")
    labels = np.asarray(labels, dtype=np.int64)
    n = int(max(inst.max(), labels.max(initial=0))) + 1
    # Sums over nucleus pixels only (in raster order, as a whole-tile bincount adds them, so
    # the results are bit-identical): the background is most of a tile.
    pix = np.flatnonzero(inst)
    flat = inst.ravel()[pix]
    rows, cols = np.divmod(pix, inst.shape[1])
    x = cols.astype(np.float64) * px_um_x
    y = rows.astype(np.float64) * px_um_y
    m0 = np.maximum(_label_sums(flat, None, n), 1.0)
    mx = _label_sums(flat, x, n) / m0
    my = _label_sums(flat, y, n) / m0
    # central second moments via E[x^2] - E[x]^2 (nuclei are small, cancellation is harmless)
    mu20 = _label_sums(flat, x * x, n) / m0 - mx**2
    mu02 = _label_sums(flat, y * y, n) / m0 - my**2
    mu11 = _label_sums(flat, x * y, n) / m0 - mx * my
    half_trace = (mu20 + mu02) / 2
    root = np.sqrt(np.maximum(((mu20 - mu02) / 2) ** 2 + mu11**2, 0.0))
    l1, l2 = half_trace + root, np.maximum(half_trace - root, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ecc = np.where(l1 > 0, np.sqrt(np.clip(1.0 - l2 / l1, 0.0, 1.0)), 0.0)
    # whole-tile stain maps, then the nucleus pixels: the same per-pixel values as before
    h = _label_sums(flat, hematoxylin_od(rgb).ravel()[pix], n) / m0
    e = _label_sums(flat, eosin_od(rgb).ravel()[pix], n) / m0
    return {
        NucleusCols.ECCENTRICITY: ecc[labels],
        NucleusCols.MEAN_H_OD: h[labels].astype(np.float32),
        NucleusCols.MEAN_E_OD: e[labels].astype(np.float32),
    }


def nucleus_features(
    polygons: np.ndarray,
    inst: np.ndarray,
    labels: np.ndarray,
    rgb: np.ndarray,
    *,
    slide_mpp: tuple[float, float],
    scale: tuple[float, float],
) -> pd.DataFrame:
    """All features of :data:`FEATURE_COLUMNS` for the nuclei ``labels`` of one tile.

    ``polygons`` are the nuclei's level-0 outlines (same order as ``labels``), ``slide_mpp``
    the slide's level-0 µm/px and ``scale`` the level-0 px per model px (``sx, sy``).
    """
    mpp_x, mpp_y = slide_mpp
    cols = _polygon_columns(polygons, mpp_x, mpp_y)
    cols.update(_pixel_columns(inst, labels, rgb, mpp_x * scale[0], mpp_y * scale[1]))
    return pd.DataFrame({c: cols[c] for c in FEATURE_COLUMNS})

"""The classical floor: nuclei from colour deconvolution + threshold + marker watershed.

No learning at all: any trained model must beat this on the same images, or it has learnt
nothing the stain does not already say. The pipeline is the textbook one (e.g. QuPath's
"cell detection", CellProfiler's IdentifyPrimaryObjects):

1. hematoxylin optical density by Ruifrok-Johnston deconvolution (:mod:`wsi_stnuc.stain`);
2. Gaussian smoothing;
3. Otsu threshold on the smoothed hematoxylin (floored, so a patch without nuclei stays empty),
   holes filled, specks removed;
4. Euclidean distance transform, its regional maxima at least one nucleus radius apart as
   markers, watershed of the inverted distance inside the mask (splits touching nuclei);
5. size filter.

Every length is given in µm and converted with ``mpp``, so the same defaults work at 20x
and 40x.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from wsi_stnuc.stain import hematoxylin_od

__all__ = ["classical_instances", "classical_nucleus_table"]


def _px(length_um: float, mpp: float) -> float:
    return length_um / mpp


def classical_instances(
    rgb: np.ndarray,
    mpp: float,
    *,
    min_area_um2: float = 8.0,
    max_area_um2: float = 500.0,
    smooth_um: float = 0.3,
    nucleus_radius_um: float = 2.5,
    min_h_od: float = 0.12,
    threshold: float | None = None,
) -> np.ndarray:
    """Nucleus instance map (``H x W`` int32, 0 = background, 1..N) of an RGB tile at ``mpp``.

    ``threshold`` (hematoxylin OD) overrides Otsu; ``min_h_od`` is the lowest threshold Otsu may
    pick (a tile of pure stroma has a low, meaningless Otsu level). ``nucleus_radius_um`` is the
    minimum distance between watershed markers: nuclei closer than that merge.
    """
    from skimage import filters, measure, morphology, segmentation
    from skimage.feature import peak_local_max

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {rgb.shape}")
    if mpp is None or mpp <= 0:
        raise ValueError(f"mpp (µm per pixel) must be positive, got {mpp}")
    h = hematoxylin_od(rgb[..., :3])
    h = ndi.gaussian_filter(h, sigma=max(_px(smooth_um, mpp), 0.0))
    if threshold is None:
        # Clip the top percentile first: a few black specks (dust, pen, folds) would otherwise
        # drag Otsu's level far above the nuclei.
        clipped = np.minimum(h, np.percentile(h, 99.5))
        level = float(filters.threshold_otsu(clipped)) if np.ptp(clipped) > 0 else np.inf
        threshold = max(level, min_h_od)
    mask = h > threshold
    min_px = max(int(round(min_area_um2 / mpp**2)), 1)
    mask = ndi.binary_fill_holes(mask)
    mask = morphology.remove_small_objects(mask, max_size=min_px // 2)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)

    dist = ndi.distance_transform_edt(mask)
    # Smoothing the distance map removes the many tiny maxima of ragged outlines.
    dist = ndi.gaussian_filter(dist, sigma=max(_px(smooth_um, mpp), 0.5))
    radius_px = max(int(round(_px(nucleus_radius_um, mpp))), 1)
    comps, _ = ndi.label(mask)
    peaks = peak_local_max(dist, min_distance=radius_px, labels=comps, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # Components too small to hold a peak still get one marker (their own label).
    unmarked = np.setdiff1d(np.unique(comps[mask]), np.unique(comps[markers > 0]))
    if len(unmarked):
        extra = np.isin(comps, unmarked)
        markers[extra] = comps[extra] + len(peaks)
    inst = segmentation.watershed(-dist, markers, mask=mask)
    # Marker regions can leave one label in several pieces; each piece becomes its own label
    # (measure.label keeps distinct values apart, so neighbouring nuclei never merge).
    inst = measure.label(inst, background=0, connectivity=1)

    # Size filter, vectorised over labels.
    area = np.bincount(inst.ravel())
    bad = (area < min_px) | (area > max_area_um2 / mpp**2)
    bad[0] = True
    inst[bad[inst]] = 0
    return segmentation.relabel_sequential(inst)[0].astype(np.int32)


def classical_nucleus_table(
    rgb: np.ndarray, mpp: float, *, x0: float = 0.0, y0: float = 0.0, **kwargs
):
    """The baseline's nuclei as a NucleusTable-like GeoDataFrame (level-0 px polygons).

    ``rgb`` is a level-0 region whose top-left corner is ``(x0, y0)``; ``kwargs`` go to
    :func:`classical_instances`. Columns: ``nucleus_id``, ``centroid_x``, ``centroid_y``,
    ``area_um2``, ``mean_hematoxylin_od`` and the polygon ``geometry``; no classes (the baseline
    does not classify), so it evaluates on segmentation and detection only.
    """
    import geopandas as gpd
    import shapely

    from wsi_stnuc.formats import NucleusCols as C
    from wsi_stnuc.inference.stitch import instances_to_polygons

    inst = classical_instances(rgb, mpp, **kwargs)
    labels, polys = instances_to_polygons(inst, x0, y0, 1.0, 1.0)
    keep = np.array([p is not None for p in polys], dtype=bool)
    labels, polys = labels[keep], polys[keep]
    n = int(inst.max()) + 1
    h = hematoxylin_od(rgb[..., :3])
    area_px = np.bincount(inst.ravel(), minlength=n)[labels]
    mean_h = np.bincount(inst.ravel(), weights=h.ravel(), minlength=n)[labels] / area_px
    xy = shapely.get_coordinates(shapely.centroid(polys)).reshape(-1, 2)
    return gpd.GeoDataFrame(
        {
            C.NUCLEUS_ID: np.arange(1, len(labels) + 1, dtype=np.int64),
            C.CENTROID_X: xy[:, 0],
            C.CENTROID_Y: xy[:, 1],
            C.AREA_UM2: area_px * mpp**2,
            C.MEAN_H_OD: mean_h,
        },
        geometry=gpd.GeoSeries(polys),
    )

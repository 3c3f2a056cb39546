"""Tissue detection on a low-resolution overview, returned as level-0 polygons.

Saturation separates stained tissue from glass and from grey debris better than brightness;
optical density rejects faintly tinted glass. Otsu picks the saturation threshold per slide,
then morphology closes gaps between tissue fragments, fills small holes and drops specks.
"""

from __future__ import annotations

import numpy as np
import shapely
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import disk, remove_small_holes, remove_small_objects

from wsi_stnuc.slide.base import SlideReader

# QuPath annotation class of detected tissue (written by export.qupath.write_qupath_annotations)
TISSUE_CLASS = "Tissue"
TISSUE_COLOR = (64, 160, 64)
# below this saturation nothing is stained, whatever Otsu says (a blank slide has no tissue)
MIN_SATURATION = 0.05
MIN_OPTICAL_DENSITY = 0.05


def tissue_mask(
    rgb: np.ndarray,
    pixel_um: float,
    *,
    min_area_um2: float = 1e4,
    max_hole_um2: float = 1e5,
    close_um: float = 16.0,
) -> np.ndarray:
    """Boolean tissue mask of an overview image whose pixels are ``pixel_um`` µm wide."""
    rgbf = rgb.astype(np.float32)
    cmax, cmin = rgbf.max(axis=2), rgbf.min(axis=2)
    saturation = np.where(cmax > 0, (cmax - cmin) / np.maximum(cmax, 1), 0.0)
    od = -np.log10((rgbf + 1.0) / 256.0).mean(axis=2)
    candidates = saturation[od > MIN_OPTICAL_DENSITY]
    if candidates.size < 2 or np.ptp(candidates) < 1e-6:
        return np.zeros(rgb.shape[:2], bool)
    threshold = max(float(threshold_otsu(candidates)), MIN_SATURATION)
    mask = (saturation > threshold) & (od > MIN_OPTICAL_DENSITY)
    radius = max(1, round(close_um / pixel_um))
    mask = ndi.binary_closing(np.pad(mask, radius), structure=disk(radius))[
        radius:-radius, radius:-radius
    ]
    px_area = pixel_um * pixel_um
    mask = remove_small_holes(mask, max_size=max(1, round(max_hole_um2 / px_area)))
    return remove_small_objects(mask, max_size=max(1, round(min_area_um2 / px_area)))


def mask_to_polygons(mask: np.ndarray, sx: float = 1.0, sy: float = 1.0):
    """Exact pixel-edge outline of ``mask`` as a shapely geometry, scaled by ``(sx, sy)``.

    Each horizontal run of True pixels becomes a box; their union is the mask's outline.
    """
    padded = np.pad(mask.astype(np.int8), ((0, 0), (1, 1)))
    rows, starts = np.nonzero(np.diff(padded, axis=1) == 1)
    _, ends = np.nonzero(np.diff(padded, axis=1) == -1)
    if rows.size == 0:
        return shapely.Polygon()
    boxes = shapely.box(starts * sx, rows * sy, ends * sx, (rows + 1) * sy)
    return shapely.union_all(boxes).simplify(0)  # drop collinear vertices only


def detect_tissue(
    slide: SlideReader,
    *,
    thumb_mpp: float = 8.0,
    max_size: int | None = None,
    min_area_um2: float = 1e4,
    max_hole_um2: float = 1e5,
    close_um: float = 16.0,
):
    """Tissue of ``slide`` as a shapely (Multi)Polygon in level-0 pixels (empty if none).

    Works on an overview at ``thumb_mpp`` µm/px (or, with ``max_size``, the overview whose
    longer side is ``max_size`` px). Pieces under ``min_area_um2`` are dropped and holes under
    ``max_hole_um2`` filled. Needs the slide's mpp (areas are physical).
    """
    mpp_x, mpp_y = slide.mpp
    width, height = slide.dimensions
    if max_size is not None:
        thumb_mpp = max(width * mpp_x, height * mpp_y) / max_size
    sx, sy = thumb_mpp / mpp_x, thumb_mpp / mpp_y
    tw, th = max(1, round(width / sx)), max(1, round(height / sy))
    overview = slide.read_scaled(0.0, 0.0, tw, th, sx, sy)
    mask = tissue_mask(
        overview,
        thumb_mpp,
        min_area_um2=min_area_um2,
        max_hole_um2=max_hole_um2,
        close_um=close_um,
    )
    tissue = mask_to_polygons(mask, sx, sy)
    # the overview's last row/column may reach past the slide; clip to the slide
    return shapely.intersection(tissue, shapely.box(0, 0, width, height))

from __future__ import annotations

import numpy as np
import pytest
import shapely
import tifffile

from wsi_stnuc.slide.registry import open_slide
from wsi_stnuc.slide.tissue import detect_tissue, mask_to_polygons, tissue_mask


def test_mask_to_polygons_is_exact():
    rng = np.random.default_rng(0)
    mask = rng.random((40, 50)) > 0.6
    geom = mask_to_polygons(mask, 2.0, 3.0)
    assert geom.area == pytest.approx(mask.sum() * 6.0)
    # a pixel centre is inside the outline iff the pixel is set
    rows, cols = np.mgrid[0:40, 0:50]
    inside = shapely.contains_xy(geom, (cols + 0.5) * 2.0, (rows + 0.5) * 3.0)
    np.testing.assert_array_equal(inside, mask)
    assert mask_to_polygons(np.zeros((5, 5), bool)).is_empty


def _synthetic_section(tmp_path):
    """White glass, a pink disk (tissue) with a small hole, a tiny speck and a grey smudge."""
    h, w = 1200, 1600
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w, 3), 242, np.uint8)
    disk = (xx - 600) ** 2 + (yy - 600) ** 2 < 400**2
    img[disk] = (200, 110, 170)
    img[(xx - 600) ** 2 + (yy - 600) ** 2 < 10**2] = 242  # hole of ~300 px² (~20 µm²)
    img[(xx - 1400) ** 2 + (yy - 200) ** 2 < 6**2] = (150, 60, 140)  # speck < min area
    img[900:1000, 1300:1500] = (150, 150, 150)  # unsaturated debris
    path = tmp_path / "section.tif"
    tifffile.imwrite(
        path,
        img,
        tile=(256, 256),
        photometric="rgb",
        resolution=(1e4, 1e4),
        resolutionunit="CENTIMETER",
    )  # 1 µm/px
    return path, disk


def test_detect_tissue_synthetic(tmp_path):
    path, disk = _synthetic_section(tmp_path)
    with open_slide(path) as slide:
        tissue = detect_tissue(slide, thumb_mpp=8.0)
    assert tissue.geom_type == "Polygon" and len(tissue.interiors) == 0  # hole filled
    # true disk area within the outline quantisation of 8 µm overview pixels
    assert tissue.area == pytest.approx(disk.sum(), rel=0.06)
    assert tissue.centroid.distance(shapely.Point(600, 600)) < 8
    assert not tissue.intersects(shapely.box(1300, 900, 1500, 1000))


def test_blank_slide_has_no_tissue(tmp_path):
    path = tmp_path / "blank.tif"
    tifffile.imwrite(
        path,
        np.full((512, 512, 3), 240, np.uint8),
        tile=(256, 256),
        photometric="rgb",
        resolution=(2e4, 2e4),
        resolutionunit="CENTIMETER",
    )
    with open_slide(path) as slide:
        assert detect_tissue(slide).is_empty
    assert not tissue_mask(np.full((20, 20, 3), 240, np.uint8), 8.0).any()


@pytest.mark.realdata
def test_cmu_tissue(cmu_slide):
    with open_slide(cmu_slide) as slide:
        tissue = detect_tissue(slide)
        coarse = detect_tissue(slide, max_size=256)
    frac = tissue.area / (2220 * 2967)
    # the section fills about a third of this crop (checked against the thumbnail)
    assert 0.25 < frac < 0.5
    assert shapely.box(0, 0, 2220, 2967).covers(tissue)
    assert coarse.intersection(tissue).area > 0.8 * tissue.area

"""Per-nucleus features against scikit-image's regionprops and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import regionprops

from wsi_stnuc.formats import NucleusCols
from wsi_stnuc.inference.features import FEATURE_COLUMNS, nucleus_features
from wsi_stnuc.inference.stitch import instances_to_polygons
from wsi_stnuc.stain import eosin_od, hematoxylin_od


def _tile():
    rng = np.random.default_rng(3)
    inst = np.zeros((64, 64), np.int32)
    inst[5:15, 5:25] = 1  # elongated rectangle
    yy, xx = np.mgrid[:64, :64]
    inst[(yy - 40) ** 2 + (xx - 40) ** 2 < 81] = 2  # disc
    inst[50:60, 5:10] = 4
    inst[50:60, 10:20][5:, :] = 4  # L shape: not convex
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return inst, rgb


def test_against_regionprops():
    inst, rgb = _tile()
    labels, polys = instances_to_polygons(inst, 0.0, 0.0, 1.0, 1.0, simplify=0)
    f = nucleus_features(polys, inst, labels, rgb, slide_mpp=(0.5, 0.5), scale=(1.0, 1.0))
    assert list(f.columns) == list(FEATURE_COLUMNS)
    props = {p.label: p for p in regionprops(inst)}
    h, e = hematoxylin_od(rgb), eosin_od(rgb)
    for i, lab in enumerate(labels):
        p = props[lab]
        assert f[NucleusCols.ECCENTRICITY][i] == pytest.approx(p.eccentricity, abs=1e-6)
        # the contour follows pixel edges but cuts each corner pixel diagonally
        assert f[NucleusCols.AREA_UM2][i] == pytest.approx(p.area * 0.25, rel=0.15)
        assert f[NucleusCols.MEAN_H_OD][i] == pytest.approx(h[inst == lab].mean(), rel=1e-5)
        assert f[NucleusCols.MEAN_E_OD][i] == pytest.approx(e[inst == lab].mean(), rel=1e-5)
    sol = dict(zip(labels, f[NucleusCols.SOLIDITY], strict=True))
    assert sol[1] == pytest.approx(1.0) and sol[4] < 0.9
    ecc = dict(zip(labels, f[NucleusCols.ECCENTRICITY], strict=True))
    assert ecc[2] < 0.2 < ecc[1]


def test_anisotropic_pixels_and_scale():
    inst, rgb = _tile()
    labels, polys = instances_to_polygons(inst, 0.0, 0.0, 2.0, 1.0, simplify=0)
    f = nucleus_features(polys, inst, labels, rgb, slide_mpp=(0.25, 0.5), scale=(2.0, 1.0))
    # 2 level-0 px of 0.25 µm in x and 1 of 0.5 µm in y: model pixels are 0.5 x 0.5 µm squares
    props = {p.label: p for p in regionprops(inst)}
    for i, lab in enumerate(labels):
        assert f[NucleusCols.ECCENTRICITY][i] == pytest.approx(props[lab].eccentricity, abs=1e-6)
    _, iso = instances_to_polygons(inst, 0.0, 0.0, 1.0, 1.0, simplify=0)
    ref = nucleus_features(iso, inst, labels, rgb, slide_mpp=(0.5, 0.5), scale=(1.0, 1.0))
    np.testing.assert_allclose(f[NucleusCols.AREA_UM2], ref[NucleusCols.AREA_UM2])
    np.testing.assert_allclose(f[NucleusCols.PERIMETER_UM], ref[NucleusCols.PERIMETER_UM])

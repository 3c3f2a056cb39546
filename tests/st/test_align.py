"""Registration: matrix reading, direction, keypoints, geometry transform."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from wsi_stnuc.errors import InputError
from wsi_stnuc.st.align import (
    affine_from_keypoints,
    apply_affine,
    check_affine,
    microns_to_slide_matrix,
    parse_matrix,
    read_alignment_csv,
    transform_geometries,
)

# Asymmetric on purpose: different x/y scales, shear, rotation and offsets, so a transposed
# or inverted matrix gives a visibly different answer.
M = np.array([[1.8, 0.15, -120.0], [-0.05, 2.2, 340.0], [0.0, 0.0, 1.0]])


def test_direction_he_px_to_um_and_back(tmp_path):
    path = tmp_path / "x_he_imagealignment.csv"
    np.savetxt(path, M, delimiter=",")
    m = read_alignment_csv(path)
    np.testing.assert_allclose(m, M)
    ps = 0.2125
    he_px = np.array([[100.0, 50.0], [2000.0, 30.0], [5.0, 3000.0]])
    # M maps H&E px -> morphology px; µm = morphology px * pixel size.
    um = apply_affine(M, he_px) * ps
    a = microns_to_slide_matrix(m, ps)
    np.testing.assert_allclose(apply_affine(a, um), he_px, atol=1e-9)
    # The transpose (a classic mistake) must not give the same answer.
    assert not np.allclose(apply_affine(np.linalg.inv(M.T.copy()), um / ps), he_px)


def test_transform_geometries_matches_points():
    a = microns_to_slide_matrix(M, 0.5)
    polys = shapely.polygons(
        shapely.linearrings(
            np.array([[0, 0], [10, 0], [10, 5], [0, 0], [20, 20], [30, 20], [30, 28]], float),
            indices=[0, 0, 0, 0, 1, 1, 1],
        )
    )
    out = transform_geometries(polys, a)
    for src, dst in zip(polys, out, strict=True):
        np.testing.assert_allclose(
            shapely.get_coordinates(dst), apply_affine(a, shapely.get_coordinates(src))
        )


def test_keypoints_recover_matrix(tmp_path):
    ps = 0.2125
    rng = np.random.default_rng(1)
    he = rng.uniform(0, 5000, size=(8, 2))
    xen_um = apply_affine(M, he) * ps
    path = tmp_path / "keypoints.csv"
    lines = ["fixedX,fixedY,alignmentX,alignmentY"]
    lines += [f"{f[0]},{f[1]},{h[0]},{h[1]}" for f, h in zip(xen_um, he, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    m, resid = affine_from_keypoints(path, pixel_size=ps)
    np.testing.assert_allclose(m, M, atol=1e-6)
    assert resid < 1e-6
    noisy = xen_um + rng.normal(0, 2.0, xen_um.shape)
    _, resid2 = affine_from_keypoints((he, noisy), pixel_size=ps)
    assert 0.1 < resid2 < 5.0


@pytest.mark.parametrize(
    "text",
    ["1,0,0\n0,0,0\n0,0,1", "1,2,3\n2,4,6\n0,0,1", "1,0\n0,1", "a,b,c\n1,2,3\n0,0,1"],
)
def test_bad_alignment_csv_names_file(tmp_path, text):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError, match="bad.csv"):
        read_alignment_csv(path)


def test_missing_csv_and_bad_keypoints(tmp_path):
    with pytest.raises(InputError, match="nope.csv"):
        read_alignment_csv(tmp_path / "nope.csv")
    kp = tmp_path / "kp.csv"
    kp.write_text("x,y\n1,2\n")
    with pytest.raises(InputError, match="fixedX"):
        affine_from_keypoints(kp, pixel_size=0.2)
    collinear = np.array([[0, 0], [1, 1], [2, 2], [3, 3]], float)
    with pytest.raises(InputError):
        affine_from_keypoints((collinear, collinear), pixel_size=0.2)


def test_parse_matrix():
    a = parse_matrix("2,0,10,0,3,20")
    np.testing.assert_allclose(apply_affine(a, np.array([[1.0, 1.0]])), [[12.0, 23.0]])
    with pytest.raises(InputError, match="--matrix"):
        parse_matrix("1,2,3")
    with pytest.raises(InputError, match="singular"):
        parse_matrix("0,0,1,0,0,1")
    with pytest.raises(InputError, match="last row"):
        check_affine(np.array([[1, 0, 0], [0, 1, 0], [0.1, 0, 1]]))


def test_transform_geodataframe_and_series():
    import geopandas as gpd

    a = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    pts = gpd.GeoSeries(shapely.points([[1.0, 2.0], [3.0, 4.0]]), index=[5, 6])
    out = transform_geometries(pts, a)
    assert list(out.index) == [5, 6]
    np.testing.assert_allclose(shapely.get_coordinates(out.values), [[3, 6], [7, 12]])
    df = transform_geometries(gpd.GeoDataFrame({"v": [1, 2]}, geometry=pts.values), a)
    assert list(df["v"]) == [1, 2]
    np.testing.assert_allclose(shapely.get_coordinates(df.geometry.values), [[3, 6], [7, 12]])

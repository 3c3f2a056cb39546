"""Registration between the ST frame (µm) and the H&E slide (level-0 pixels).

Frames and matrices (3x3 homogeneous, acting on column vectors ``[x, y, 1]``):

* ``M`` - the 10x ``*_he_imagealignment.csv``: **H&E pixels -> morphology (DAPI) pixels**.
* morphology pixels = µm / ``pixel_size``.
* ``A = microns_to_slide_matrix(M, pixel_size) = inv(M) @ diag(1/ps, 1/ps, 1)``:
  **ST µm -> H&E level-0 pixels**; this is what :func:`transform_geometries` applies.

Xenium Explorer keypoint exports (``*_keypoints.csv``) have columns ``fixedX, fixedY`` - the
point in the Xenium (fixed) frame, in µm - and ``alignmentX, alignmentY`` - the same point in
the image being aligned (the H&E), in its pixels. :func:`affine_from_keypoints` fits ``M`` to
them by least squares so both routes end in the same ``M``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

from wsi_stnuc.errors import InputError

log = logging.getLogger(__name__)

KEYPOINT_FIXED = ("fixedX", "fixedY")  # Xenium frame, µm
KEYPOINT_MOVING = ("alignmentX", "alignmentY")  # H&E image, pixels

# Conditioning limit: beyond this the matrix is numerically singular for our coordinates.
_MAX_CONDITION = 1e8


def check_affine(matrix: np.ndarray, source: str | Path | None = "matrix") -> np.ndarray:
    """Validate a 3x3 affine (finite, last row ``0 0 1``, invertible); return it as float64."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (2, 3):
        m = np.vstack([m, [0.0, 0.0, 1.0]])
    if m.shape != (3, 3):
        raise InputError(source, f"an affine must be 3x3 (or 2x3), got shape {m.shape}")
    if not np.isfinite(m).all():
        raise InputError(source, "affine matrix has non-finite entries")
    if not np.allclose(m[2], [0.0, 0.0, 1.0], atol=1e-9):
        raise InputError(source, f"last row must be 0 0 1 (an affine, not a homography): {m[2]}")
    det = np.linalg.det(m[:2, :2])
    if abs(det) < 1e-12 or np.linalg.cond(m[:2, :2]) > _MAX_CONDITION:
        raise InputError(source, f"affine matrix is singular (det={det:.3g})")
    return m


def read_alignment_csv(path: str | Path) -> np.ndarray:
    """Read a 10x ``*_he_imagealignment.csv`` (3 rows x 3 numbers, no header): ``M``,
    H&E pixels -> morphology pixels."""
    path = Path(path)
    try:
        m = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read a 3x3 alignment matrix ({exc})") from exc
    return check_affine(m, path)


def parse_matrix(text: str, source: str = "--matrix") -> np.ndarray:
    """``"a,b,c,d,e,f"`` (or 9 numbers) -> 3x3 ``[[a, b, c], [d, e, f], [0, 0, 1]]``."""
    try:
        values = [float(v) for v in text.replace(";", ",").replace(" ", ",").split(",") if v]
    except ValueError as exc:
        raise InputError(source, f"not a list of numbers: {text!r}") from exc
    if len(values) not in (6, 9):
        raise InputError(source, f"need 6 (a,b,c,d,e,f) or 9 numbers, got {len(values)}")
    return check_affine(np.array(values).reshape(-1, 3), source)


def fit_affine(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares 3x3 affine with ``dst ~ A @ [src, 1]`` (N >= 3 non-collinear points)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
        raise ValueError(f"fit_affine: need two Nx2 arrays, got {src.shape} and {dst.shape}")
    if len(src) < 3:
        raise ValueError(f"fit_affine: need at least 3 point pairs, got {len(src)}")
    design = np.column_stack([src, np.ones(len(src))])
    rhs = dst
    if weights is not None:
        w = np.sqrt(np.asarray(weights, dtype=np.float64))[:, None]
        design, rhs = design * w, dst * w
    sol, _, rank, _ = np.linalg.lstsq(design, rhs, rcond=None)
    if rank < 3:
        raise ValueError("fit_affine: points are collinear; the affine is undetermined")
    return np.vstack([sol.T, [0.0, 0.0, 1.0]])


def apply_affine(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Apply a 3x3 affine to an ``N x 2`` array of points."""
    xy = np.asarray(xy, dtype=np.float64)
    # einsum, not ``@``: a 2x2 matmul over millions of rows goes through BLAS gemm, which is
    # several times slower here (thread start-up and contention on a loaded machine).
    return np.einsum("nj,ij->ni", xy, np.asarray(matrix, dtype=np.float64)[:2, :2]) + matrix[:2, 2]


def read_keypoints(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Xenium Explorer keypoint CSV -> ``(he_px, xenium_um)`` (two ``N x 2`` arrays)."""
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read keypoints CSV ({exc})") from exc
    need = [*KEYPOINT_FIXED, *KEYPOINT_MOVING]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise InputError(path, f"keypoints CSV lacks column(s) {missing}; has {list(df.columns)}")
    vals = df[need].to_numpy(dtype=np.float64)
    if not np.isfinite(vals).all():
        raise InputError(path, "keypoints CSV has missing or non-numeric values")
    return vals[:, 2:4], vals[:, 0:2]


def affine_from_keypoints(
    keypoints: str | Path | tuple[np.ndarray, np.ndarray],
    *,
    pixel_size: float,
) -> tuple[np.ndarray, float]:
    """Fit ``M`` (H&E px -> morphology px) to keypoint pairs by least squares.

    Args:
        keypoints: a Xenium Explorer keypoint CSV, or ``(he_px, xenium_um)`` arrays (N x 2).
        pixel_size: µm per morphology pixel of the bundle.

    Returns:
        ``(M, residual_um)``: the matrix and the median distance, in µm, between the keypoints'
        Xenium positions and their H&E positions mapped through ``M``.
    """
    source: str | Path = keypoints if isinstance(keypoints, (str, Path)) else "keypoints"
    if isinstance(keypoints, (str, Path)):
        he_px, xen_um = read_keypoints(keypoints)
    else:
        he_px, xen_um = (np.asarray(a, dtype=np.float64) for a in keypoints)
    if len(he_px) < 3:
        raise InputError(source, f"need at least 3 keypoint pairs, got {len(he_px)}")
    try:
        m = fit_affine(he_px, xen_um / pixel_size)
    except ValueError as exc:
        raise InputError(source, str(exc)) from exc
    m = check_affine(m, source)
    resid = np.linalg.norm(apply_affine(m, he_px) * pixel_size - xen_um, axis=1)
    return m, float(np.median(resid))


def microns_to_slide_matrix(m: np.ndarray, pixel_size: float) -> np.ndarray:
    """``A = inv(M) @ diag(1/ps, 1/ps, 1)``: ST µm -> H&E level-0 pixels."""
    if not (np.isfinite(pixel_size) and pixel_size > 0):
        raise InputError(None, f"pixel_size must be positive, got {pixel_size}")
    m = check_affine(m)
    return np.linalg.inv(m) @ np.diag([1.0 / pixel_size, 1.0 / pixel_size, 1.0])


def transform_geometries(geoms, matrix: np.ndarray):
    """Apply a 3x3 affine to shapely geometries, vectorised.

    Takes an array of geometries, a GeoSeries or a GeoDataFrame and returns the same kind
    (index and other columns kept).
    """
    import geopandas as gpd

    a = check_affine(matrix)

    def _apply(values):
        return shapely.transform(np.asarray(values), lambda xy: apply_affine(a, xy))

    if isinstance(geoms, gpd.GeoDataFrame):
        return geoms.set_geometry(_apply(geoms.geometry.values))
    if isinstance(geoms, gpd.GeoSeries):
        return gpd.GeoSeries(_apply(geoms.values), index=geoms.index, crs=geoms.crs)
    return _apply(geoms)


def scale_of(matrix: np.ndarray) -> float:
    """Mean linear scale of an affine (sqrt |det| of its 2x2 part)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(matrix)[:2, :2]))))

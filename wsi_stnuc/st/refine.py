"""Automatic refinement of an ST -> H&E affine from the nuclei themselves.

Given an approximate affine ``A`` (ST µm -> H&E level-0 px), nuclei are detected on the H&E
(hematoxylin channel) in a few windows around ST cells; the ST nucleus centroids mapped through
``A`` are then matched to the detections:

1. a robust translation by Hough voting: every ST point votes for the displacements to its
   nearby detections; the densest bin wins (immune to the many wrong neighbours);
2. trimmed ICP: nearest-neighbour pairs, the worst ones trimmed, an affine refit, the search
   radius shrunk, until the correction stops changing.

The refinement refuses (:class:`RegistrationError`) when the result is implausible: too few or
too small a fraction of inliers, or a correction larger than ``max_shift_um`` / ``max_scale``
/ ``max_rotation_deg``. The median residual before and after is reported in µm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from wsi_stnuc.errors import InputError
from wsi_stnuc.st.align import apply_affine, check_affine, fit_affine
from wsi_stnuc.stain import hematoxylin_od

log = logging.getLogger(__name__)


class RegistrationError(InputError):
    """Automatic refinement found no plausible match between ST cells and H&E nuclei."""


@dataclass
class RefineResult:
    """Outcome of :func:`refine_alignment` / :func:`match_point_sets`."""

    matrix: np.ndarray  # refined ST µm -> level-0 px (or, for point sets, the correction)
    correction: np.ndarray  # level-0 px -> level-0 px, applied after the input affine
    before_um: float  # median distance of ST nuclei to the nearest detection, input affine
    after_um: float  # the same with the refined affine
    n_inliers: int
    n_points: int
    n_detections: int

    def summary(self) -> str:
        return (
            f"refinement: median residual {self.before_um:.2f} µm -> {self.after_um:.2f} µm, "
            f"{self.n_inliers}/{self.n_points} ST nuclei matched to {self.n_detections} detections"
        )


# --------------------------------------------------------------------------- detection
def detect_nuclei(
    rgb: np.ndarray, mpp: float, *, min_diameter_um: float = 4.0, threshold: float | None = None
) -> np.ndarray:
    """Nucleus centres (``N x 2``, x/y in the array's pixels) on an H&E RGB array.

    Hematoxylin optical density (:func:`wsi_stnuc.stain.hematoxylin_od`), smoothed at about a nucleus radius,
    thresholded (Otsu unless given) and split into local maxima of the smoothed density at
    least ``min_diameter_um`` apart: the classical blob detector, fast and stain-robust enough
    for registration (it need not find every nucleus, only a consistent subset).
    """
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu

    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"detect_nuclei: need an H x W x 3 image, got {rgb.shape}")
    hema = hematoxylin_od(rgb[..., :3])
    radius_px = max(min_diameter_um / 2.0 / mpp, 1.0)
    smooth = ndi.gaussian_filter(hema, sigma=radius_px / 1.5)
    if threshold is None:
        if float(smooth.max() - smooth.min()) < 1e-6:
            return np.zeros((0, 2))
        threshold = float(threshold_otsu(smooth))
    peaks = peak_local_max(
        smooth,
        min_distance=max(int(round(radius_px)), 1),
        threshold_abs=threshold,
        exclude_border=False,
    )
    return peaks[:, ::-1].astype(np.float64) + 0.5  # (row, col) -> pixel-centre (x, y)


# --------------------------------------------------------------------------- matching
def vote_translation(
    moving: np.ndarray, fixed: np.ndarray, *, search: float, bin_size: float, k: int = 8
) -> tuple[np.ndarray, int]:
    """Most-voted displacement ``fixed - moving`` among the ``k`` nearest neighbours within
    ``search``; returns ``(t, votes)``."""
    tree = cKDTree(fixed)
    dist, idx = tree.query(moving, k=min(k, len(fixed)), distance_upper_bound=search)
    dist, idx = np.atleast_2d(dist), np.atleast_2d(idx)
    ok = np.isfinite(dist)
    if not ok.any():
        return np.zeros(2), 0
    rows = np.nonzero(ok)[0]
    disp = fixed[idx[ok]] - moving[rows]
    n_bins = int(np.ceil(2 * search / bin_size)) + 1
    edges = np.linspace(-search, search, n_bins + 1)
    hist, _, _ = np.histogram2d(disp[:, 0], disp[:, 1], bins=[edges, edges])
    hist = ndi.gaussian_filter(hist, 1.0)
    i, j = np.unravel_index(np.argmax(hist), hist.shape)
    peak = np.array([(edges[i] + edges[i + 1]) / 2, (edges[j] + edges[j + 1]) / 2])
    near = np.linalg.norm(disp - peak, axis=1) <= 1.5 * bin_size
    if not near.any():
        return peak, 0
    return disp[near].mean(axis=0), int(near.sum())


def match_point_sets(
    moving: np.ndarray,
    fixed: np.ndarray,
    *,
    search: float,
    inlier: float,
    trim: float = 0.7,
    max_iter: int = 30,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Affine ``C`` with ``fixed ~ C(moving)``: translation vote, then trimmed ICP.

    Args:
        moving, fixed: ``N x 2`` and ``M x 2`` points in one frame (e.g. level-0 px).
        search: largest displacement looked for (same units).
        inlier: distance under which a final pair counts as a match.
        trim: fraction of nearest pairs kept for each refit.

    Returns ``(C, inlier_mask over moving, distance of each moving point to its nearest fixed
    point after C)``.
    """
    moving = np.asarray(moving, dtype=np.float64)
    fixed = np.asarray(fixed, dtype=np.float64)
    if len(moving) < 3 or len(fixed) < 3:
        return np.eye(3), np.zeros(len(moving), bool), np.full(len(moving), np.inf)
    t, _ = vote_translation(moving, fixed, search=search, bin_size=max(inlier / 2, 1e-9))
    corr = np.eye(3)
    corr[:2, 2] = t
    tree = cKDTree(fixed)
    radius = max(3 * inlier, search / 4)
    for _ in range(max_iter):
        dist, idx = tree.query(apply_affine(corr, moving), distance_upper_bound=radius)
        ok = np.isfinite(dist)
        if ok.sum() < 3:
            break
        cut = np.quantile(dist[ok], trim)
        keep = ok & (dist <= cut)
        if keep.sum() < 3:
            break
        try:
            new = fit_affine(moving[keep], fixed[idx[keep]])
        except ValueError:
            break
        change = np.abs(apply_affine(new, moving[keep]) - apply_affine(corr, moving[keep])).max()
        corr = new
        radius = max(inlier, min(radius, 3 * float(np.median(dist[keep]))))
        if change < 1e-3 * inlier:
            break
    dist, _ = tree.query(apply_affine(corr, moving))
    return corr, dist <= inlier, dist


def check_correction(
    corr: np.ndarray,
    center: np.ndarray,
    px_um: float,
    *,
    max_shift_um: float,
    max_scale: float,
    max_rotation_deg: float,
    source: str | Path | None,
) -> None:
    """Refuse a correction that moves ``center`` too far, rescales or rotates too much."""
    shift_um = float(np.linalg.norm(apply_affine(corr, center[None])[0] - center)) * px_um
    u, s, vt = np.linalg.svd(corr[:2, :2])
    rot = u @ vt
    angle = abs(np.degrees(np.arctan2(rot[1, 0], rot[0, 0])))
    scale_dev = float(np.max(np.abs(s - 1.0)))
    problems = []
    if shift_um > max_shift_um:
        problems.append(f"shift {shift_um:.1f} µm > {max_shift_um} µm")
    if scale_dev > max_scale:
        problems.append(f"scale change {scale_dev:.1%} > {max_scale:.0%}")
    if angle > max_rotation_deg:
        problems.append(f"rotation {angle:.1f}° > {max_rotation_deg}°")
    if problems:
        raise RegistrationError(
            source,
            "automatic refinement is implausible (" + "; ".join(problems) + "); check the "
            "alignment matrix or run without refinement",
        )


# --------------------------------------------------------------------------- slide-level
def _windows(points_px: np.ndarray, size_px: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` window origins centred on random ST points, far enough apart not to overlap."""
    order = rng.permutation(len(points_px))
    chosen: list[np.ndarray] = []
    for i in order[: 50 * n]:  # bounded: at most 50 n candidates, tiny arrays
        p = points_px[i]
        if all(np.max(np.abs(p - c)) >= size_px for c in chosen):
            chosen.append(p)
            if len(chosen) == n:
                break
    return np.array(chosen) - size_px / 2


def refine_alignment(
    slide,
    centroids_um: np.ndarray,
    matrix: np.ndarray,
    *,
    detect_mpp: float = 0.5,
    window_um: float = 400.0,
    n_windows: int = 12,
    search_um: float = 60.0,
    inlier_um: float = 3.0,
    min_inliers: int = 30,
    min_inlier_fraction: float = 0.25,
    max_shift_um: float = 80.0,
    max_scale: float = 0.05,
    max_rotation_deg: float = 5.0,
    seed: int = 0,
) -> RefineResult:
    """Refine ``matrix`` (ST µm -> level-0 px) by matching ST nuclei to H&E nuclei.

    Args:
        slide: a :class:`wsi_stnuc.slide.base.SlideReader` (or a path, opened with
            ``open_slide``); only ``read_region(x0, y0, w, h, mpp)``, ``mpp`` and
            ``dimensions`` are used.
        centroids_um: ``N x 2`` ST nucleus centroids, µm.
        matrix: the input affine, ST µm -> level-0 px.
        detect_mpp: resolution at which nuclei are detected.
        window_um, n_windows: size and number of H&E windows read around ST cells.
        search_um: largest misregistration searched for; inlier_um: match tolerance.

    Raises:
        RegistrationError: too few matches, or an implausibly large correction.
    """
    if isinstance(slide, (str, Path)):
        from wsi_stnuc.slide.registry import open_slide

        slide = open_slide(slide)
    source = getattr(slide, "path", None)
    a = check_affine(matrix)
    mpp_x, mpp_y = slide.mpp
    px_um = (mpp_x + mpp_y) / 2.0
    st_px = apply_affine(a, np.asarray(centroids_um, dtype=np.float64))
    w0, h0 = slide.dimensions
    inside = (st_px[:, 0] >= 0) & (st_px[:, 1] >= 0) & (st_px[:, 0] < w0) & (st_px[:, 1] < h0)
    if inside.sum() < min_inliers:
        raise RegistrationError(
            source, f"only {int(inside.sum())} ST cells fall on the slide under this alignment"
        )
    st_px = st_px[inside]
    rng = np.random.default_rng(seed)
    size_px = window_um / px_um
    out_px = int(round(window_um / detect_mpp))
    scale = detect_mpp / px_um
    moving, fixed = [], []
    for x0, y0 in _windows(st_px, size_px, n_windows, rng):
        rgb = slide.read_region(x0, y0, out_px, out_px, mpp=detect_mpp)
        det = detect_nuclei(rgb, detect_mpp)
        fixed.append(det * scale + [x0, y0])
        # ST points in the window, shrunk by the search margin so edge nuclei find partners.
        m = (st_px[:, 0] >= x0) & (st_px[:, 0] < x0 + size_px)
        m &= (st_px[:, 1] >= y0) & (st_px[:, 1] < y0 + size_px)
        moving.append(st_px[m])
    moving_a = np.concatenate(moving) if moving else np.zeros((0, 2))
    fixed_a = np.concatenate(fixed) if fixed else np.zeros((0, 2))
    log.info("refine: %d ST nuclei vs %d H&E detections", len(moving_a), len(fixed_a))
    return _finish(
        moving_a,
        fixed_a,
        a,
        px_um,
        search_um,
        inlier_um,
        min_inliers,
        min_inlier_fraction,
        max_shift_um,
        max_scale,
        max_rotation_deg,
        source,
    )


def refine_points(
    moving_px: np.ndarray,
    fixed_px: np.ndarray,
    matrix: np.ndarray,
    px_um: float,
    *,
    search_um: float = 60.0,
    inlier_um: float = 3.0,
    min_inliers: int = 30,
    min_inlier_fraction: float = 0.25,
    max_shift_um: float = 80.0,
    max_scale: float = 0.05,
    max_rotation_deg: float = 5.0,
    source: str | Path | None = None,
) -> RefineResult:
    """:func:`refine_alignment` on given point sets (level-0 px): ST nuclei mapped through
    ``matrix`` (``moving_px``) and H&E detections (``fixed_px``)."""
    return _finish(
        np.asarray(moving_px, float),
        np.asarray(fixed_px, float),
        check_affine(matrix),
        px_um,
        search_um,
        inlier_um,
        min_inliers,
        min_inlier_fraction,
        max_shift_um,
        max_scale,
        max_rotation_deg,
        source,
    )


def _finish(
    moving,
    fixed,
    a,
    px_um,
    search_um,
    inlier_um,
    min_inliers,
    min_frac,
    max_shift_um,
    max_scale,
    max_rotation_deg,
    source,
) -> RefineResult:
    if len(moving) < min_inliers or len(fixed) < min_inliers:
        raise RegistrationError(
            source,
            f"too few points to refine the alignment ({len(moving)} ST nuclei, {len(fixed)} "
            f"H&E detections; need {min_inliers})",
        )
    search, inlier = search_um / px_um, inlier_um / px_um
    tree = cKDTree(fixed)
    before = np.minimum(tree.query(moving)[0], search) * px_um
    corr, inl, dist = match_point_sets(moving, fixed, search=search, inlier=inlier)
    n_in = int(inl.sum())
    if n_in < min_inliers or n_in < min_frac * len(moving):
        raise RegistrationError(
            source,
            f"automatic refinement found only {n_in} of {len(moving)} ST nuclei near an H&E "
            f"nucleus (need {min_inliers} and {min_frac:.0%}); the alignment is too far off or "
            "the tissue does not match",
        )
    check_correction(
        corr,
        moving.mean(axis=0),
        px_um,
        max_shift_um=max_shift_um,
        max_scale=max_scale,
        max_rotation_deg=max_rotation_deg,
        source=source,
    )
    after = np.minimum(dist, search) * px_um
    result = RefineResult(
        matrix=corr @ a,
        correction=corr,
        before_um=float(np.median(before)),
        after_um=float(np.median(after)),
        n_inliers=n_in,
        n_points=len(moving),
        n_detections=len(fixed),
    )
    log.info(result.summary())
    return result

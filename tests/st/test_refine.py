"""Automatic refinement: detector on a synthetic H&E, matcher on point sets."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_stnuc.st.align import apply_affine
from wsi_stnuc.st.refine import (
    RegistrationError,
    detect_nuclei,
    refine_alignment,
    refine_points,
)


def _nuclei_points(n, size, spacing, rng):
    """Well-separated random points (dart throwing on a jittered grid)."""
    g = np.arange(spacing / 2, size, spacing)
    xx, yy = np.meshgrid(g, g)
    pts = np.column_stack([xx.ravel(), yy.ravel()])
    pts += rng.uniform(-spacing / 4, spacing / 4, pts.shape)
    return pts[rng.permutation(len(pts))[:n]]


def test_detect_nuclei_finds_disks(he_tools):
    paint_he, _ = he_tools
    rng = np.random.default_rng(0)
    pts = _nuclei_points(80, 400, 30, rng)
    img = paint_he(pts, (400, 400), 7)
    det = detect_nuclei(img, mpp=0.5)
    d = np.linalg.norm(det[:, None] - pts[None], axis=2)
    assert abs(len(det) - len(pts)) <= 3
    assert np.median(d.min(axis=0)) < 1.0


def _misaligned(rng, n=600):
    fixed = _nuclei_points(n, 3000, 20, rng)  # level-0 px, 0.5 µm/px -> ~10 µm apart
    true = np.array([[1.01, 0.01, 9.0], [-0.012, 0.995, -14.0], [0, 0, 1.0]])
    # ST points that the current affine puts off by ``true``: moving = inv(true)(fixed)
    moving = apply_affine(np.linalg.inv(true), fixed) + rng.normal(0, 0.6, fixed.shape)
    keep = rng.random(len(moving)) > 0.2  # 20% of ST nuclei not detected on H&E
    spurious = rng.uniform(0, 3000, (60, 2))  # false detections
    return moving[keep], np.vstack([fixed, spurious]), true


def test_refine_points_recovers_known_correction():
    rng = np.random.default_rng(3)
    moving, fixed, true = _misaligned(rng)
    res = refine_points(moving, fixed, np.eye(3), px_um=0.5)
    err = np.linalg.norm(apply_affine(res.correction, moving) - apply_affine(true, moving), axis=1)
    assert np.median(err) * 0.5 < 0.5  # µm
    assert res.after_um < 1.0 < res.before_um
    assert res.n_inliers > 0.6 * len(moving)


def test_refine_refuses_unrelated_points():
    rng = np.random.default_rng(4)
    moving = rng.uniform(0, 3000, (400, 2))
    fixed = rng.uniform(0, 3000, (400, 2)) + 5000
    with pytest.raises(RegistrationError, match="implausible|only"):
        refine_points(moving, fixed, np.eye(3), px_um=0.5)


def test_refine_refuses_huge_correction():
    rng = np.random.default_rng(5)
    fixed = _nuclei_points(500, 3000, 20, rng)
    moving = fixed - [150.0, 0.0]  # 75 µm shift, searched for but above the cap
    with pytest.raises(RegistrationError, match="shift"):
        refine_points(moving, fixed, np.eye(3), px_um=0.5, search_um=100, max_shift_um=30)


def test_refine_alignment_on_image(he_tools):
    paint_he, ArraySlide = he_tools  # noqa: N806
    rng = np.random.default_rng(7)
    mpp = 0.5
    pts_px = _nuclei_points(500, 900, 26, rng)
    slide = ArraySlide(paint_he(pts_px, (900, 900), 6), mpp)
    true_a = np.array([[1 / mpp, 0, 0], [0, 1 / mpp, 0], [0, 0, 1.0]])  # µm -> px
    um = apply_affine(np.linalg.inv(true_a), pts_px)
    off = true_a.copy()
    off[:2, 2] = [8.0, -6.0]  # 5 µm misregistration
    res = refine_alignment(
        slide, um, off, detect_mpp=mpp, window_um=200, n_windows=4, min_inliers=20
    )
    assert res.before_um > 3.0
    assert res.after_um < 1.0
    np.testing.assert_allclose(apply_affine(res.matrix, um), pts_px, atol=1.5)

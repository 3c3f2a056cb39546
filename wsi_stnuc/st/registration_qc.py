"""How well the ST nuclei sit on the H&E nuclei: residuals, matched fraction, warnings.

Independent of the refinement itself (it also judges ``--no-refine`` runs and a hand-made
alignment): H&E nuclei are detected with the classical blob detector
(:func:`wsi_stnuc.st.refine.detect_nuclei`) in a few windows around ST cells, and every ST
nucleus centroid there gets its distance to the nearest detection, in µm, under the affine
before and after refinement. The windows' RGB is kept for the QC figure
(:mod:`wsi_stnuc.st.qc_figures`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from wsi_stnuc.st.align import apply_affine
from wsi_stnuc.st.refine import detect_nuclei

__all__ = ["RegistrationQC", "registration_qc", "registration_warnings"]


@dataclass
class RegistrationQC:
    """Residuals of sampled ST nuclei (µm) and the windows they were measured in."""

    residual_before_um: np.ndarray
    residual_after_um: np.ndarray
    match_um: float
    windows: list[tuple[float, float, float, float]] = field(default_factory=list)  # level-0
    crops: list[np.ndarray] = field(default_factory=list)  # RGB of each window
    crop_mpp: float = 1.0

    @property
    def n_points(self) -> int:
        return len(self.residual_after_um)

    @property
    def matched_fraction(self) -> float:
        """Share of sampled ST nuclei within ``match_um`` of an H&E nucleus (after)."""
        if not self.n_points:
            return float("nan")
        return float(np.mean(self.residual_after_um <= self.match_um))

    @property
    def median_after_um(self) -> float:
        return float(np.median(self.residual_after_um)) if self.n_points else float("nan")

    def to_dict(self) -> dict:
        return {
            "n_points": self.n_points,
            "match_um": self.match_um,
            "matched_fraction": self.matched_fraction,
            "median_before_um": (
                float(np.median(self.residual_before_um)) if self.n_points else None
            ),
            "median_after_um": self.median_after_um,
        }


def _window_origins(points_px: np.ndarray, size: float, dims, n: int, seed: int) -> np.ndarray:
    """``n`` window origins centred on ST nuclei spread over the slide (deterministic)."""
    rng = np.random.default_rng(seed)
    order = np.argsort(points_px[:, 0] + 1e-3 * points_px[:, 1], kind="stable")
    # One pick in each of n equal slices along x: spread across the section, not clustered.
    slices = np.array_split(order, n)
    picks = np.array([s[rng.integers(len(s))] for s in slices if len(s)])
    centres = points_px[picks] if len(picks) else np.zeros((0, 2))
    hi = np.maximum(np.asarray(dims, np.float64) - size, 0.0)
    return np.clip(centres - size / 2, 0.0, hi)


def registration_qc(
    slide,
    centroids_um: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    *,
    n_windows: int = 3,
    window_um: float = 120.0,
    match_um: float = 3.0,
    seed: int = 0,
) -> RegistrationQC:
    """Residuals of the ST nuclei (``N x 2`` centroids, µm) in ``n_windows`` windows of
    ``window_um``, under the affines ``before`` and ``after`` (ST µm -> level-0 px)."""
    mpp = float(np.mean(slide.mpp))
    crop_mpp = max(mpp, 0.5)  # detection needs no finer pixels; keeps crops small
    size = window_um / mpp
    after_px = apply_affine(after, centroids_um)
    before_px = apply_affine(before, centroids_um)
    origins = _window_origins(after_px, size, slide.dimensions, n_windows, seed)
    res_b, res_a, windows, crops = [], [], [], []
    n_px = int(round(window_um / crop_mpp))
    for x0, y0 in origins:
        rgb = slide.read_region(x0, y0, n_px, n_px, mpp=crop_mpp)
        found = detect_nuclei(rgb, crop_mpp)
        windows.append((float(x0), float(y0), size, size))
        crops.append(rgb)
        if len(found) == 0:
            continue
        tree = cKDTree(found * (crop_mpp / mpp) + (x0, y0))  # detections in level-0 px
        inside = np.all((after_px >= (x0, y0)) & (after_px < (x0 + size, y0 + size)), axis=1)
        res_a.append(tree.query(after_px[inside])[0] * mpp)
        res_b.append(tree.query(before_px[inside])[0] * mpp)
    empty = np.zeros(0)
    return RegistrationQC(
        residual_before_um=np.concatenate(res_b) if res_b else empty,
        residual_after_um=np.concatenate(res_a) if res_a else empty,
        match_um=match_um,
        windows=windows,
        crops=crops,
        crop_mpp=crop_mpp,
    )


def registration_warnings(
    qc: RegistrationQC, *, min_matched: float = 0.6, max_residual_um: float = 2.5
) -> list[str]:
    """Plain-language warnings when the registration looks weak (empty when it looks fine)."""
    out = []
    if qc.n_points == 0:
        return ["registration QC: no ST nucleus and H&E nucleus found in the sampled windows"]
    if qc.matched_fraction < min_matched:
        out.append(
            f"registration looks weak: only {qc.matched_fraction:.0%} of {qc.n_points} sampled "
            f"ST nuclei lie within {qc.match_um:g} µm of an H&E nucleus (warning below "
            f"{min_matched:.0%}); check the alignment and the QC figure"
        )
    if qc.median_after_um > max_residual_um:
        out.append(
            f"registration looks weak: median residual {qc.median_after_um:.2f} µm (warning "
            f"above {max_residual_um:g} µm); check the alignment and the QC figure"
        )
    return out

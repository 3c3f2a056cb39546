"""Realistic disagreement between ST nuclei and the true H&E nuclei of the same section.

Applied to true nucleus polygons in H&E level-0 px, it returns what a Xenium run would have
segmented: nuclei slightly misplaced as a whole (global affine misregistration of a few µm),
outlines that differ (DAPI vs H&E boundary jitter), some nuclei missed, and some neighbours
merged into one cell. Everything is vectorised over nuclei.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import shapely

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class STNoise:
    """Noise levels (lengths in µm). All zero = ST nuclei are exactly the true ones."""

    shift_um: float = 0.0  # global translation of the ST frame (random direction)
    rotation_deg: float = 0.0  # global rotation about the image centre (random sign)
    jitter_um: float = 0.0  # std of the per-nucleus boundary deformation
    offset_um: float = 0.0  # std of per-nucleus centroid offsets
    missed_fraction: float = 0.0  # nuclei absent from the ST segmentation
    merged_fraction: float = 0.0  # fraction of nuclei that end up in a merged pair
    merge_distance_um: float = 2.0  # only neighbours this close can merge
    spillover: float = 0.0  # fraction of each close neighbour's transcripts assigned to a cell
    spillover_distance_um: float = 3.0  # neighbours (outline to outline) this close spill over

    @classmethod
    def mild(cls) -> STNoise:
        """The demo level: 2 µm misregistration, small outline jitter, 5 % missed, 2 % merged,
        5 % transcript spillover from touching neighbours."""
        return cls(2.0, 0.2, 0.3, 0.2, 0.05, 0.02, 2.0, 0.05, 3.0)

    @classmethod
    def realistic(cls) -> STNoise:
        """A harder level seen on real runs: 4 µm shift, 10 % missed, 6 % merged, 12 % spillover."""
        return cls(4.0, 0.5, 0.5, 0.4, 0.10, 0.06, 3.0, 0.12, 4.0)


@dataclass
class NoisyST:
    """Result of :func:`apply_st_noise`.

    ``polygons[i]`` is ST nucleus ``i`` (level-0 px, after misregistration), built from the
    true nuclei with ``assignment == i``; ``primary[i]`` is the first of them.
    ``assignment[t]`` is the ST index of true nucleus ``t`` or ``-1`` when missed.
    ``misregistration`` is the 3x3 affine (level-0 -> level-0) that was applied.
    """

    polygons: np.ndarray
    primary: np.ndarray
    assignment: np.ndarray
    misregistration: np.ndarray


def affine_about(
    center: tuple[float, float], angle_rad: float, shift: tuple[float, float]
) -> np.ndarray:
    """3x3 rotation about ``center`` followed by a translation."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    cx, cy = center
    rot = np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy], [0, 0, 1.0]])
    rot[:2, 2] += shift
    return rot


def apply_affine(geoms: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 3x3 affine to a shapely array (vectorised over all vertices)."""
    lin, t = matrix[:2, :2], matrix[:2, 2]
    return shapely.transform(np.asarray(geoms, dtype=object), lambda xy: xy @ lin.T + t)


def _largest_part(geoms: np.ndarray) -> np.ndarray:
    """Each geometry's largest polygon part (make_valid may split a twisted outline)."""
    parts, idx = shapely.get_parts(geoms, return_index=True)
    parts_area = shapely.area(parts)
    order = np.lexsort((-parts_area, idx))
    first = np.unique(idx[order], return_index=True)[1]
    out = np.empty(len(geoms), dtype=object)
    out[idx[order][first]] = parts[order][first]
    return out


def jitter_outlines(
    polygons: np.ndarray, rng: np.random.Generator, jitter_px: float, offset_px: float
) -> np.ndarray:
    """Deform each outline by a smooth random radial perturbation and shift it slightly.

    The perturbation is a low-order Fourier series in the angle about the centroid (k = 1..4),
    so outlines stay smooth, like a DAPI mask compared with the hematoxylin boundary.
    """
    polygons = np.asarray(polygons, dtype=object)
    n = len(polygons)
    if n == 0 or (jitter_px <= 0 and offset_px <= 0):
        return polygons
    rings = shapely.get_exterior_ring(polygons)
    xy, idx = shapely.get_coordinates(rings, return_index=True)
    cen = shapely.get_coordinates(shapely.centroid(polygons))
    d = xy - cen[idx]
    r = np.hypot(d[:, 0], d[:, 1])
    phi = np.arctan2(d[:, 1], d[:, 0])
    ks = np.arange(1, 5)
    amp = rng.normal(0, jitter_px / np.sqrt(len(ks)), (n, len(ks)))
    phase = rng.uniform(0, 2 * np.pi, (n, len(ks)))
    dr = (amp[idx] * np.cos(ks[None, :] * phi[:, None] + phase[idx])).sum(axis=1)
    # Closing vertices share the angle of the first one, so rings stay closed.
    scale = np.clip(r + dr, 0.3 * r, None) / np.where(r > 0, r, 1)
    shift = rng.normal(0, offset_px, (n, 2))
    new = cen[idx] + d * scale[:, None] + shift[idx]
    out = shapely.polygons(shapely.linearrings(new, indices=idx))
    bad = ~shapely.is_valid(out)
    if bad.any():
        out[bad] = _largest_part(shapely.make_valid(out[bad]))
    return out


def _disjoint_pairs(pairs: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """A random set of node-disjoint pairs from candidate pairs (i < j), vectorised."""
    if pairs.shape[1] == 0:
        return pairs
    pairs = pairs[:, rng.permutation(pairs.shape[1])]
    first = np.full(n, pairs.shape[1], dtype=np.int64)
    order = np.arange(pairs.shape[1])
    np.minimum.at(first, pairs[0], order)
    np.minimum.at(first, pairs[1], order)
    chosen = (first[pairs[0]] == order) & (first[pairs[1]] == order)
    return pairs[:, chosen]


def spill_counts(
    counts: np.ndarray,
    polygons: np.ndarray,
    mpp: float,
    fraction: float,
    distance_um: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Counts with transcripts leaking between neighbours (segmentation bleed, diffusion).

    Every cell receives a binomial ``fraction`` of the counts of each neighbour whose outline
    lies within ``distance_um``; its own counts are unchanged (the leak adds, as a neighbour's
    transcripts falling inside a cell's boundary do).
    """
    counts = np.asarray(counts)
    if fraction <= 0 or len(counts) < 2:
        return counts.copy()
    tree = shapely.STRtree(polygons)
    dst, src = tree.query(polygons, predicate="dwithin", distance=distance_um / mpp)
    keep = dst != src
    dst, src = dst[keep], src[keep]
    leaked = rng.binomial(counts[src], fraction).astype(counts.dtype)
    out = counts.copy()
    np.add.at(out, dst, leaked)
    return out


def apply_st_noise(
    polygons: np.ndarray,
    mpp: float,
    noise: STNoise,
    rng: np.random.Generator,
    image_shape: tuple[int, int] | None = None,
) -> NoisyST:
    """Turn true nucleus polygons (level-0 px at ``mpp`` µm/px) into ST-segmented nuclei."""
    polygons = np.asarray(polygons, dtype=object)
    n = len(polygons)
    present = rng.random(n) >= noise.missed_fraction
    assignment = np.full(n, -1, dtype=np.int64)
    kept = np.flatnonzero(present)

    # Merge near pairs of present nuclei into one cell (the ST cell of the first one).
    partner = np.full(n, -1, dtype=np.int64)
    n_pairs = int(round(noise.merged_fraction * len(kept) / 2))
    if n_pairs > 0:
        tree = shapely.STRtree(polygons[kept])
        cand = tree.query(
            polygons[kept], predicate="dwithin", distance=noise.merge_distance_um / mpp
        )
        cand = kept[cand[:, cand[0] < cand[1]]]
        pairs = _disjoint_pairs(cand, rng, n)[:, :n_pairs]
        if pairs.shape[1] < n_pairs:
            log.warning(
                "only %d of %d requested merges have a close neighbour", pairs.shape[1], n_pairs
            )
        partner[pairs[0]] = pairs[1]
        present[pairs[1]] = False  # absorbed into its partner's cell
    primary = np.flatnonzero(present)
    assignment[primary] = np.arange(len(primary))
    absorbed = np.flatnonzero(partner >= 0)
    assignment[partner[absorbed]] = assignment[absorbed]

    shapes = polygons[primary].copy()
    has = partner[primary] >= 0
    if has.any():
        a, b = shapes[has], polygons[partner[primary[has]]]
        # Close the gap between the pair: one segmented blob, as a merged DAPI mask looks.
        g = noise.merge_distance_um / mpp / 2 + 0.5
        blob = shapely.buffer(shapely.buffer(shapely.union(a, b), g), -g)
        single = shapely.get_type_id(blob) == 3
        blob[~single] = shapely.convex_hull(shapely.union(a, b)[~single])
        shapes[has] = blob
    shapes = jitter_outlines(shapes, rng, noise.jitter_um / mpp, noise.offset_um / mpp)

    if image_shape is None:
        xmin, ymin, xmax, ymax = shapely.total_bounds(polygons) if n else (0, 0, 0, 0)
        center = ((xmin + xmax) / 2, (ymin + ymax) / 2)
    else:
        center = (image_shape[1] / 2, image_shape[0] / 2)
    direction = rng.uniform(0, 2 * np.pi)
    shift = noise.shift_um / mpp * np.array([np.cos(direction), np.sin(direction)])
    angle = np.deg2rad(noise.rotation_deg) * rng.choice([-1.0, 1.0])
    mis = affine_about(center, angle, tuple(shift))
    shapes = apply_affine(shapes, mis)
    return NoisyST(shapes, primary, assignment, mis)

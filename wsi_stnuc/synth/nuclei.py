"""Synthetic nuclei: per-type shape laws, placement (apart, touching or overlapping), polygons.

A nucleus is a star-shaped ellipse: in its own frame (semi-axes ``a`` along ``theta``, ``b``
across) the boundary radius at angle ``phi`` is ``1 + sum_k amp_k cos(k phi + phase_k)``
(k = 2, 3). The polygon and the raster (painter) evaluate the same formula, so the truth
polygon is exactly the painted outline up to pixel discretisation. Where nuclei overlap, the
one with the higher ``depth`` lies on top: :func:`visible_polygons` gives the outlines as seen
(the lower nucleus loses the overlap), which is what the painter's instance map shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from wsi_stnuc.synth.fields import Layout

HARMONICS = (2, 3)


@dataclass(frozen=True)
class NucleusType:
    """Shape and stain law of one fine cell type (lengths in µm, stain in optical density)."""

    name: str
    semi_major_um: float
    semi_minor_um: float
    size_cv: float
    irregularity: float  # std of the harmonic amplitudes
    oriented: bool  # follows the local fibre direction
    hema: float  # mean hematoxylin OD inside the nucleus
    rim: float  # extra OD at the nuclear membrane (vesicular nuclei)
    nucleolus_um: float  # nucleolus radius, 0 for none
    chromatin: float  # amplitude of the chromatin texture


# Three visible identities: small dark round (T, B), large pale vesicular (Malignant),
# elongated spindle (Fibroblast, Endothelial).
NUCLEUS_TYPES: tuple[NucleusType, ...] = (
    NucleusType("T", 3.5, 3.3, 0.08, 0.03, False, 1.55, 0.10, 0.0, 0.18),
    NucleusType("B", 3.7, 3.4, 0.08, 0.03, False, 1.45, 0.10, 0.0, 0.18),
    NucleusType("Malignant", 6.4, 5.4, 0.12, 0.06, False, 0.55, 0.45, 0.9, 0.35),
    NucleusType("Fibroblast", 7.2, 2.4, 0.12, 0.04, True, 1.10, 0.10, 0.0, 0.20),
    NucleusType("Endothelial", 6.6, 2.1, 0.12, 0.04, True, 1.00, 0.10, 0.0, 0.20),
)
TYPE_NAMES: tuple[str, ...] = tuple(t.name for t in NUCLEUS_TYPES)

# Region code (see Layout.region_at) -> (acceptance probability of a grid site, type mix).
REGION_MIX: dict[int, tuple[float, tuple[float, ...]]] = {
    1: (0.30, (0.10, 0.05, 0.00, 0.60, 0.25)),  # stroma
    2: (0.95, (0.04, 0.01, 0.95, 0.00, 0.00)),  # tumour nest
    3: (0.95, (0.62, 0.33, 0.00, 0.03, 0.02)),  # lymphoid aggregate
}


@dataclass
class Nuclei:
    """Arrays of per-nucleus parameters (level-0 px; ``kind`` indexes ``NUCLEUS_TYPES``)."""

    cx: np.ndarray
    cy: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    amp: np.ndarray  # N x len(HARMONICS)
    phase: np.ndarray  # N x len(HARMONICS)
    kind: np.ndarray
    nucleolus: np.ndarray  # N x 2, nucleolus centre in the unit frame
    depth: np.ndarray  # drawing order: where two overlap, the higher depth is on top

    def __len__(self) -> int:
        return len(self.cx)

    def take(self, idx: np.ndarray) -> Nuclei:
        return Nuclei(**{k: v[idx] for k, v in self.__dict__.items()})

    def boundary_radius(self, phi: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Unit-frame boundary radius at angles ``phi`` (broadcast against nuclei ``rows``)."""
        amp = self.amp if rows is None else self.amp[rows]
        phase = self.phase if rows is None else self.phase[rows]
        r = np.ones_like(phi)
        for k, h in enumerate(HARMONICS):
            r = r + amp[:, k, None] * np.cos(h * phi + phase[:, k, None])
        return r

    def polygons(self, n_vertices: int = 32) -> np.ndarray:
        """Exact outlines as a shapely array (level-0 px), counter-clockwise in image axes."""
        phi = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)[None, :]
        r = self.boundary_radius(np.broadcast_to(phi, (len(self), n_vertices)))
        u = self.a[:, None] * r * np.cos(phi)
        v = self.b[:, None] * r * np.sin(phi)
        c, s = np.cos(self.theta)[:, None], np.sin(self.theta)[:, None]
        x = self.cx[:, None] + u * c - v * s
        y = self.cy[:, None] + u * s + v * c
        return shapely.polygons(np.stack([x, y], axis=-1))


def _independent_set(pairs: np.ndarray, n: int, rank: np.ndarray) -> np.ndarray:
    """Greedy maximal independent set by ``rank`` (lower wins), vectorised in rounds.

    Equal to the sequential greedy pass: a node is kept once no undecided neighbour outranks
    it, and dropped as soon as a neighbour is kept.
    """
    src, dst = pairs
    state = np.zeros(n, dtype=np.int8)  # 0 undecided, 1 kept, 2 dropped
    while (state == 0).any():
        und = state == 0
        blocked = np.zeros(n, dtype=bool)
        m = und[src] & und[dst] & (rank[dst] < rank[src])
        blocked[src[m]] = True
        state[und & ~blocked] = 1
        hit = (state[dst] == 1) & (state[src] == 0)
        state[src[hit]] = 2
    return state == 1


def sample_nuclei(
    layout: Layout,
    rng: np.random.Generator,
    mpp: float,
    *,
    spacing_um: float = 6.5,
    gap_um: float = 0.6,
    density: float = 1.0,
    max_overlap: float = 0.0,
) -> Nuclei:
    """Place nuclei on a jittered grid by region, then keep a subset without conflicts.

    Sites are accepted with the region's probability (times ``density``). Two nuclei conflict
    when closer than ``gap_um`` (``max_overlap`` 0) or, with ``max_overlap`` > 0, when they
    overlap by more than that fraction of the smaller one (so touching and slightly
    overlapping nuclei stay). Conflicts are resolved by a random-priority greedy independent
    set, so tumour nests end up packed and stroma sparse.
    """
    h, w = layout.tissue.shape
    step = spacing_um / mpp
    gy, gx = np.mgrid[step / 2 : h : step, step / 2 : w : step]
    x = gx.ravel() + rng.uniform(-0.45, 0.45, gx.size) * step
    y = gy.ravel() + rng.uniform(-0.45, 0.45, gy.size) * step
    region = layout.region_at(x, y)
    accept_p = np.zeros(len(x))
    kind = np.zeros(len(x), dtype=np.int16)
    u = rng.random(len(x))
    for code, (p, mix) in REGION_MIX.items():
        sel = region == code
        accept_p[sel] = min(1.0, p * density)
        kind[sel] = rng.choice(len(mix), size=int(sel.sum()), p=np.asarray(mix) / sum(mix))
    keep = u < accept_p
    x, y, kind = x[keep], y[keep], kind[keep]
    n = len(x)

    tab = {f: np.array([getattr(t, f) for t in NUCLEUS_TYPES]) for f in NucleusType.__annotations__}
    size = np.exp(rng.normal(0, tab["size_cv"][kind]))
    a = tab["semi_major_um"][kind] * size / mpp
    b = tab["semi_minor_um"][kind] * size / mpp * np.exp(rng.normal(0, 0.05, n))
    fibre = layout.fibre_angle[np.clip(y.astype(int), 0, h - 1), np.clip(x.astype(int), 0, w - 1)]
    theta = np.where(tab["oriented"][kind], fibre + rng.normal(0, 0.2, n), rng.uniform(0, np.pi, n))
    amp = np.abs(rng.normal(0, 1, (n, len(HARMONICS)))) * tab["irregularity"][kind][:, None]
    phase = rng.uniform(0, 2 * np.pi, (n, len(HARMONICS)))
    nucleolus = rng.uniform(-0.3, 0.3, (n, 2))
    nuclei = Nuclei(x, y, a, b, theta, amp, phase, kind, nucleolus, np.arange(n))

    polys = nuclei.polygons()
    # Keep nuclei whose outline stays inside the image.
    xmin, ymin, xmax, ymax = shapely.bounds(polys).T
    inside = (xmin >= 1) & (ymin >= 1) & (xmax <= w - 1) & (ymax <= h - 1)
    nuclei, polys = nuclei.take(np.flatnonzero(inside)), polys[inside]
    pairs = _conflicts(polys, gap_um / mpp, max_overlap)
    kept = _independent_set(pairs, len(nuclei), rng.permutation(len(nuclei)))
    # Row-major order of the final nuclei makes ids spatially coherent, like Xenium's.
    idx = np.flatnonzero(kept)
    order = np.lexsort((nuclei.cx[idx], np.round(nuclei.cy[idx] / (50 / mpp))))
    nuclei = nuclei.take(idx[order])
    # Drawn only with overlap, so the random stream (and image) of max_overlap 0 is as before.
    n_kept = len(nuclei)
    nuclei.depth = rng.permutation(n_kept) if max_overlap > 0 else np.arange(n_kept)
    return nuclei


def _conflicts(polys: np.ndarray, gap_px: float, max_overlap: float) -> np.ndarray:
    """``2 x M`` index pairs of outlines too close (``max_overlap`` 0) or overlapping too much."""
    tree = shapely.STRtree(polys)
    if max_overlap <= 0:
        pairs = tree.query(polys, predicate="dwithin", distance=gap_px)
        return pairs[:, pairs[0] != pairs[1]]
    pairs = tree.query(polys, predicate="intersects")
    pairs = pairs[:, pairs[0] != pairs[1]]
    inter = shapely.area(shapely.intersection(polys[pairs[0]], polys[pairs[1]]))
    smaller = np.minimum(shapely.area(polys[pairs[0]]), shapely.area(polys[pairs[1]]))
    return pairs[:, inter > max_overlap * smaller]


def visible_polygons(nuclei: Nuclei, n_vertices: int = 32) -> np.ndarray:
    """Outlines as seen: a nucleus loses what nuclei of higher ``depth`` cover of it.

    Each nucleus is cut by its overlapping neighbours one round per neighbour (a nucleus has
    few), so the work is vectorised over nuclei. A cut that splits a nucleus keeps its largest
    part; the result is one valid Polygon per nucleus, the painter's instance map in vector form.
    """
    polys = nuclei.polygons(n_vertices)
    i, j = shapely.STRtree(polys).query(polys, predicate="intersects")
    below = (i != j) & (nuclei.depth[i] < nuclei.depth[j])
    i, j = i[below], j[below]
    if not len(i):
        return polys
    order = np.argsort(i, kind="stable")
    i, j = i[order], j[order]
    rank = np.arange(len(i)) - np.searchsorted(i, i)  # k-th cover of nucleus i
    out = polys.copy()
    for k in range(int(rank.max()) + 1):
        sel = rank == k
        out[i[sel]] = shapely.difference(out[i[sel]], polys[j[sel]])
    return _largest_parts(shapely.make_valid(out))


def _largest_parts(geoms: np.ndarray) -> np.ndarray:
    """One Polygon per geometry: the largest polygonal part of each."""
    multi = shapely.get_type_id(geoms) != shapely.GeometryType.POLYGON
    if not multi.any():
        return geoms
    parts, owner = shapely.get_parts(geoms[multi], return_index=True)
    parts_area = np.where(shapely.get_type_id(parts) == 3, shapely.area(parts), -1.0)
    best = _argmax_per_group(owner, parts_area)
    out = geoms.copy()
    out[np.flatnonzero(multi)] = parts[best]
    return out


def _argmax_per_group(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the largest ``values`` entry per group (groups 0..G-1, each non-empty)."""
    order = np.lexsort((-values, groups))
    first = np.r_[True, groups[order][1:] != groups[order][:-1]]
    return order[first]

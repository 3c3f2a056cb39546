"""Only valid polygons leave the exporters: repair, reduce to polygonal parts, or drop.

QuPath 0.6 and later reject a whole GeoJSON file for one invalid polygon ("Reduction failed,
possible invalid input"), a ``GeometryCollection`` (which ``shapely.make_valid`` can return),
a null geometry or an unclosed ring. Validity is judged on the coordinates as written (snapped
to the output grid), because snapping alone can make a valid outline self-intersect. The
common case, a valid polygon, costs one vectorised ``is_valid``; only the rest is repaired.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely

_POLYGON = shapely.GeometryType.POLYGON
_MULTIPOLYGON = shapely.GeometryType.MULTIPOLYGON
_COLLECTION = shapely.GeometryType.GEOMETRYCOLLECTION


@dataclass
class GeometryReport:
    """What :func:`clean_polygons` did: rows repaired, rows dropped by reason."""

    repaired: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def add(self, other: GeometryReport) -> None:
        self.repaired += other.repaired
        for reason, n in other.dropped.items():
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def __str__(self) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in self.dropped.items() if n)
        return f"repaired {self.repaired}, dropped {self.n_dropped}" + (
            f" ({reasons})" if reasons else ""
        )


def snap(geoms: np.ndarray, decimals: int | None) -> np.ndarray:
    """Coordinates rounded to ``decimals`` digits (unchanged for ``None``)."""
    if decimals is None:
        return geoms
    return shapely.transform(geoms, lambda xy: np.round(xy, decimals))


def polygonal_parts(geoms: np.ndarray) -> np.ndarray:
    """Each geometry reduced to its non-empty polygonal parts: a Polygon, a MultiPolygon, or
    ``None`` where it has none (points, lines, empty collections)."""
    geoms = np.asarray(geoms, dtype=object)
    out = np.full(len(geoms), None, dtype=object)
    parts, index = shapely.get_parts(geoms, return_index=True)
    # collections may hold MultiPolygons: one more level of parts reaches every polygon
    for _ in range(2):
        types = shapely.get_type_id(parts)
        nested = (types == _MULTIPOLYGON) | (types == _COLLECTION)
        if not nested.any():
            break
        sub, sub_index = shapely.get_parts(parts[nested], return_index=True)
        parts = np.concatenate([parts[~nested], sub])
        index = np.concatenate([index[~nested], index[nested][sub_index]])
    keep = (shapely.get_type_id(parts) == _POLYGON) & ~shapely.is_empty(parts)
    keep &= shapely.area(parts) > 0
    parts, index = parts[keep], index[keep]
    order = np.argsort(index, kind="stable")
    parts, index = parts[order], index[order]
    counts = np.bincount(index, minlength=len(geoms))
    single = counts[index] == 1
    out[index[single]] = parts[single]
    if (~single).any():
        rows, compact = np.unique(index[~single], return_inverse=True)
        out[rows] = shapely.multipolygons(parts[~single], indices=compact)
    return out


def _usable(geoms: np.ndarray) -> np.ndarray:
    types = shapely.get_type_id(geoms)
    polygonal = (types == _POLYGON) | (types == _MULTIPOLYGON)
    return polygonal & ~shapely.is_empty(geoms) & shapely.is_valid(geoms)


def _make_valid(geoms: np.ndarray) -> np.ndarray:
    """``make_valid`` keeping areas: the "structure" method unions overlapping parts (the
    default "linework" one keeps only their symmetric difference) and drops collapsed lines."""
    return shapely.make_valid(geoms, method="structure", keep_collapsed=False)


def _repair(geoms: np.ndarray, decimals: int | None) -> np.ndarray:
    """Valid polygonal geometry on the grid (or ``None``): ``make_valid`` where invalid, then
    snap rounding (GEOS's precision reduction, the algorithm QuPath 0.6 runs on reading)."""
    fixed = geoms.copy()
    # a repaired collection's polygons may overlap, and snapping may spoil a repair: a few
    # rounds settle every case met in the tests
    for _ in range(3):
        present = fixed != None  # noqa: E711 - elementwise on an object array
        bad = present.copy()
        bad[present] = ~_usable(fixed[present])
        fixed[bad] = polygonal_parts(_make_valid(fixed[bad]))
        if decimals is not None:
            # snap rounding may collapse slivers to lines or nothing: polygonal parts again
            some = fixed != None  # noqa: E711
            fixed[some] = polygonal_parts(shapely.set_precision(fixed[some], 10.0**-decimals))
        present = fixed != None  # noqa: E711
        if _usable(fixed[present]).all():
            break
    present = fixed != None  # noqa: E711
    bad = present.copy()
    bad[present] = ~_usable(fixed[present])
    fixed[bad] = None
    return fixed


def _snap_simple(geoms: np.ndarray, decimals: int | None) -> np.ndarray:
    """Hole-free polygons rebuilt from their rounded coordinates: a ragged-array rebuild is
    several times cheaper than ``shapely.transform`` on a slide's worth of nuclei."""
    if decimals is None or len(geoms) == 0:
        return geoms
    coords, index = shapely.get_coordinates(geoms, return_index=True)
    offsets = np.zeros(len(geoms) + 1, dtype=np.int64)
    np.cumsum(np.bincount(index, minlength=len(geoms)), out=offsets[1:])
    rings = np.arange(len(geoms) + 1, dtype=np.int64)
    return shapely.from_ragged_array(_POLYGON, np.round(coords, decimals), (offsets, rings))


def _thin(geoms: np.ndarray, decimals: int | None) -> np.ndarray:
    """Outlines under 1 px² or narrower on average than a few grid cells (area / perimeter)."""
    if decimals is None:
        return np.zeros(len(geoms), dtype=bool)
    area = shapely.area(geoms)
    return (area < 1.0) | (area < 4 * 10.0**-decimals * shapely.length(geoms))


def clean_polygons(
    geoms: np.ndarray, decimals: int | None = 2
) -> tuple[np.ndarray, np.ndarray, GeometryReport]:
    """Make every geometry a valid Polygon or MultiPolygon on the ``decimals`` grid.

    Returns ``(geoms, keep, report)``: the geometries (repaired ones snapped to the grid),
    the rows that survive, and the counts. Invalid outlines are repaired with
    ``make_valid``; collections keep their polygonal parts; null, empty and non-polygonal
    geometries, and outlines that collapse on the grid, are dropped.

    Every outline is judged after snapping (a spike that nearly touches an edge crosses it
    once rounded); the common case, a valid hole-free polygon, costs a ragged-array rebuild
    and one ``is_valid``. Snap rounding as QuPath 0.6 does it (GEOS ``set_precision``, tens
    of µs per outline) runs only on repaired, holed, multi-part, tiny and thin outlines; a
    wide outline with one sub-grid neck would be left to QuPath's reader.
    """
    geoms = np.asarray(geoms, dtype=object)
    report = GeometryReport()
    null = shapely.is_missing(geoms)
    empty = ~null & shapely.is_empty(geoms)
    types = shapely.get_type_id(geoms)
    simple = (types == _POLYGON) & ~empty
    simple[simple] = shapely.get_num_interior_rings(geoms[simple]) == 0
    out = geoms.copy()
    out[simple] = _snap_simple(geoms[simple], decimals)
    good = simple.copy()
    good[simple] = shapely.is_valid(out[simple])
    # QuPath 0.6 snap-rounds on reading: a segment passing within half a grid cell of another
    # vertex is bent through it, which can collapse a valid but thin outline. Thin and tiny
    # outlines (the ones where that happens) get the same snap rounding here.
    thin = good.copy()
    thin[good] = _thin(out[good], decimals)
    todo = ~null & ~empty & (~good | thin)
    if todo.any():
        rows = np.flatnonzero(todo)
        snapped = snap(out[rows], decimals)
        fine = _usable(snapped)
        fixed = _repair(snapped, decimals)
        survived = fixed != None  # noqa: E711 - elementwise on an object array
        out[rows] = fixed
        good[rows] = survived
        was_area = np.isin(types[rows], [_POLYGON, _MULTIPOLYGON, _COLLECTION])
        report.repaired = int((~fine & survived).sum())
        report.dropped["not polygonal"] = int((~survived & ~was_area).sum())
        report.dropped["collapsed"] = int((~survived & was_area).sum())
    report.dropped["null"] = int(null.sum())
    report.dropped["empty"] = int(empty.sum())
    report.dropped = {k: v for k, v in report.dropped.items() if v}
    return out, good, report

"""Only valid polygons leave the exporter: repair, polygonal parts, drops by reason."""

from __future__ import annotations

import numpy as np
import shapely

from wsi_stnuc.export.geometry import clean_polygons, polygonal_parts, snap


def test_valid_polygons_pass_snapped_and_unchanged_otherwise():
    geoms = shapely.buffer(shapely.points([[10.123, 20.456], [50, 50]]), 4.0)
    out, keep, report = clean_polygons(geoms)
    assert keep.all() and report.repaired == 0 and report.n_dropped == 0
    assert shapely.equals_exact(out, snap(geoms, 2), 0).all()


def test_broken_geometry_is_repaired_reduced_or_dropped():
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    spike = shapely.Polygon([(0, 0), (10, 0), (10, 10), (5, 10), (5, 30), (5, 10), (0, 10)])
    collection = shapely.GeometryCollection([shapely.box(0, 0, 5, 5), shapely.LineString([(0, 0), (9, 9)])])
    overlapping = shapely.MultiPolygon([shapely.box(0, 0, 4, 4), shapely.box(2, 2, 6, 6)])
    sliver = shapely.box(0, 0, 0.003, 5)  # collapses on the 0.01 px grid
    geoms = np.array([bowtie, spike, collection, overlapping, sliver, None, shapely.Polygon(),
                      shapely.Point(1, 1)], dtype=object)  # fmt: skip
    out, keep, report = clean_polygons(geoms)
    assert keep.tolist() == [True, True, True, True, False, False, False, False]
    assert shapely.is_valid(out[keep]).all()
    assert set(shapely.get_type_id(out[keep])) <= {3, 6}  # Polygon, MultiPolygon
    assert shapely.area(out[0]) == 50.0  # both triangles of the bow tie kept
    assert shapely.equals(out[1], shapely.box(0, 0, 10, 10))  # the spike is cut off
    assert shapely.equals(out[2], shapely.box(0, 0, 5, 5))
    assert shapely.area(out[3]) == 28.0
    assert report.repaired == 4
    assert report.dropped == {"null": 1, "empty": 1, "collapsed": 1, "not polygonal": 1}


def test_polygonal_parts_of_nested_collections():
    nested = shapely.GeometryCollection(
        [shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(3, 3, 4, 4)]), shapely.Point(9, 9)]
    )
    parts = polygonal_parts(np.array([nested, shapely.LineString([(0, 0), (1, 1)]), shapely.box(0, 0, 2, 2)]))
    assert shapely.get_type_id(parts[0]) == 6 and shapely.area(parts[0]) == 2.0
    assert parts[1] is None
    assert shapely.get_type_id(parts[2]) == 3

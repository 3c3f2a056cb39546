"""Every kind of GeoJSON the exporter writes, read back by QuPath's own reader (0.5.1, 0.6.0)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely

from wsi_stnuc.classes import ClassTable
from wsi_stnuc.export.geometry import clean_polygons
from wsi_stnuc.export.qupath import (
    expand_nuclei_to_cells,
    write_qupath_annotations,
    write_qupath_geojson,
)
from wsi_stnuc.formats import LabelCols, NucleusCols, QuPath

CLASSES = ClassTable.from_names(["epithelial", "inflammatory"])


def _nuclei(n: int, seed: int = 0) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 3000, (n, 2))
    probs = rng.dirichlet([1, 1], n).astype(np.float32)
    probs[::7, 1] = np.nan  # a missing value is left out, not written as NaN
    return gpd.GeoDataFrame(
        {
            NucleusCols.NUCLEUS_ID: np.arange(1, n + 1),
            NucleusCols.CLASS_NAME: np.array(["epithelial", "inflammatory", "unknown"])[
                np.arange(n) % 3
            ],
            NucleusCols.AREA_UM2: rng.uniform(10, 60, n),
            **dict(zip(LabelCols.class_probs(CLASSES.names), probs.T, strict=True)),
            QuPath.MODEL_TAG: np.full(n, 0xABCDEF),
        },
        geometry=shapely.buffer(shapely.points(xy), rng.uniform(3, 7, n), quad_segs=5),
    )


def test_detections_geojson_and_zip(qupath, tmp_path):
    gdf = _nuclei(60)
    plain = write_qupath_geojson(gdf, tmp_path / "s.geojson", classes=CLASSES, chunk_size=25)
    zipped = write_qupath_geojson(gdf, tmp_path / "s.zip", classes=CLASSES)
    for summary in qupath.read_whole(plain, zipped):
        assert summary["object_types"]["detection"] == 60
        names = set(summary["measurements"]["names"])
        assert {"Probability: epithelial", "Probability: inflammatory"} <= names
        assert not any(n.startswith("prob_") for n in names)
        counts = {c["name"]: c["count"] for c in summary["classification"]["classes"]}
        assert counts == {"epithelial": 20, "inflammatory": 20, "unknown": 20}


def test_cells(qupath, tmp_path):
    gdf = _nuclei(40, seed=1)
    xy = shapely.get_coordinates(shapely.centroid(gdf.geometry.to_numpy()))
    cells = gdf.assign(nucleus=gdf.geometry.to_numpy())
    cells = cells.set_geometry(expand_nuclei_to_cells(gdf.geometry.to_numpy(), xy, 10.0))
    path = write_qupath_geojson(cells, tmp_path / "c.geojson", classes=CLASSES,
                                nucleus_geometry_column="nucleus")  # fmt: skip
    (summary,) = qupath.read_whole(path)
    assert summary["object_types"]["cell"] == 40
    assert summary["cells"]["with_nucleus_roi"] == 40
    assert summary["cells"]["nucleus_more_than_1px2_outside_cell"] == 0


def test_tissue_annotations(qupath, tmp_path):
    ring = shapely.box(0, 0, 500, 400).difference(shapely.box(100, 100, 200, 200))
    tissue = shapely.MultiPolygon([ring, shapely.box(700, 0, 900, 300)])
    path = write_qupath_annotations(tissue, tmp_path / "t.geojson", class_name="Tissue",
                                    color=(64, 160, 64))  # fmt: skip
    (summary,) = qupath.read_whole(path)
    assert summary["object_types"]["annotation"] == 2
    assert summary["classification"]["classes"][0]["color"] == [64, 160, 64]


@pytest.mark.realdata
def test_real_tissue_annotations(qupath, cmu_slide, tmp_path):
    from wsi_stnuc.slide.registry import open_slide
    from wsi_stnuc.slide.tissue import detect_tissue

    with open_slide(cmu_slide) as slide:
        tissue = detect_tissue(slide)
    path = write_qupath_annotations(tissue, tmp_path / "t.geojson", class_name="Tissue",
                                    color=(64, 160, 64))  # fmt: skip
    (summary,) = qupath.read_whole(path)
    assert summary["object_types"]["annotation"] == len(shapely.get_parts(tissue))


def random_polygons(rng: np.random.Generator, n: int) -> np.ndarray:
    """Star-shaped outlines and broken ones: bow ties, spikes that nearly touch an edge,
    collections with lines and points, overlapping multipolygon parts, slivers that collapse
    on the 0.01 px grid, near-zero radii, empty and null geometries."""
    out = []
    for _ in range(n):
        k = int(rng.integers(3, 12))
        cx, cy = rng.uniform(0, 5000, 2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radii = rng.uniform(0.001, 8, k)
        kind = int(rng.integers(0, 10))
        if kind == 0:
            angles = rng.permutation(angles)
        xy = np.c_[cx + radii * np.cos(angles), cy + radii * np.sin(angles)]
        if kind == 1:
            xy = np.r_[xy, [[cx + 30, cy]], xy[:1]]
        geom = shapely.Polygon(xy)
        if kind == 2:
            geom = shapely.make_valid(shapely.Polygon(np.r_[xy, [[cx + 20, cy], [cx + 20, cy]]]))
        elif kind == 3:
            line = shapely.LineString([(cx, cy), (cx + 5, cy + 5)])
            geom = shapely.GeometryCollection([geom, line, shapely.Point(cx, cy)])
        elif kind == 4:
            geom = None if rng.random() < 0.3 else geom
        elif kind == 5:
            geom = shapely.Polygon() if rng.random() < 0.3 else geom
        elif kind == 6:
            geom = shapely.box(cx, cy, cx + rng.uniform(0, 0.004), cy + 5)
        elif kind == 7:
            geom = shapely.MultiPolygon(
                [shapely.box(cx, cy, cx + 4, cy + 4), shapely.box(cx + 2, cy + 2, cx + 6, cy + 6)]
            )
        out.append(geom)
    return np.array(out, dtype=object)


@pytest.mark.slow
def test_random_broken_polygons_always_give_a_file_qupath_reads_whole(qupath, tmp_path):
    paths, kept = [], []
    for seed in range(12):
        geoms = random_polygons(np.random.default_rng(seed), 400)
        _, keep, report = clean_polygons(geoms)
        assert report.repaired > 0 and report.n_dropped > 0
        table = gpd.GeoDataFrame(
            {NucleusCols.CLASS_NAME: ["epithelial"] * len(geoms), "v": np.arange(len(geoms))},
            geometry=gpd.GeoSeries(list(geoms)),
        )
        paths.append(write_qupath_geojson(table, tmp_path / f"r{seed}.geojson", classes=CLASSES,
                                          chunk_size=150))  # fmt: skip
        kept.append(int(keep.sum()))
    for summary, n in zip(qupath.read_whole(*paths), kept, strict=True):
        assert summary["n_objects"] == n

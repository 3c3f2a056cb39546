"""Export speed: N nuclei (default 1 M) to QuPath GeoJSON (plain and zipped) and GeoParquet.

    python benchmarks/bench_export.py [--n 1000000] [--out DIR]

Nuclei are 17-vertex ellipses with the full NucleusTable columns (ids, centroids, class,
probabilities, six features), as `wsi-stnuc infer` writes them. Goal: GeoJSON <= 20 s for 1 M.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

from wsi_stnuc.classes import ClassTable
from wsi_stnuc.export.geoparquet import write_geoparquet
from wsi_stnuc.export.qupath import write_qupath_geojson
from wsi_stnuc.formats import LabelCols, NucleusCols
from wsi_stnuc.inference.features import FEATURE_COLUMNS

CLASSES = ClassTable.from_names(["epithelial", "inflammatory", "connective"])


def make_nuclei(n: int, seed: int = 0) -> gpd.GeoDataFrame:
    """``n`` elliptical nuclei on a jittered grid over a square slide, with table columns."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    idx = np.arange(n)
    cx = (idx % side) * 25.0 + rng.uniform(-4, 4, n) + 20
    cy = (idx // side) * 25.0 + rng.uniform(-4, 4, n) + 20
    unit = shapely.get_coordinates(shapely.buffer(shapely.Point(0, 0), 1.0, quad_segs=4))
    k = len(unit)
    a, b = rng.uniform(4, 9, n), rng.uniform(3, 6, n)
    theta = rng.uniform(0, np.pi, n)
    ux, uy = unit[:, 0][None] * a[:, None], unit[:, 1][None] * b[:, None]
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    xs = cx[:, None] + ux * cos - uy * sin
    ys = cy[:, None] + ux * sin + uy * cos
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    rings = shapely.linearrings(coords, indices=np.repeat(idx, k))
    probs = rng.dirichlet(np.ones(CLASSES.n_classes), n).astype(np.float32)
    class_id = probs.argmax(1) + 1
    table = {
        NucleusCols.NUCLEUS_ID: idx + 1,
        NucleusCols.TILE_ID: (idx // 500).astype(np.int64),
        NucleusCols.CENTROID_X: cx,
        NucleusCols.CENTROID_Y: cy,
        NucleusCols.CLASS_ID: class_id.astype(np.int32),
        NucleusCols.CLASS_NAME: np.array(CLASSES.names, dtype=object)[class_id - 1],
        NucleusCols.DET_PROB: rng.uniform(0.5, 1, n).astype(np.float32),
    }
    for c, name in enumerate(LabelCols.class_probs(CLASSES.names)):
        table[name] = probs[:, c]
    for col in FEATURE_COLUMNS:
        table[col] = rng.uniform(0.1, 50, n)
    return gpd.GeoDataFrame(table, geometry=shapely.polygons(rings))


def report(label: str, n: int, wall: float, cpu: float, path: Path) -> None:
    # CPU seconds of this process next to wall seconds: on a shared machine the wall clock
    # includes waiting for a core
    mb = path.stat().st_size / 1e6
    print(f"{label:20s} wall {wall:6.1f} s  cpu {cpu:6.1f} s  "
          f"{n / wall / 1e3:5.0f} k nuclei/s (wall)  {mb:5.0f} MB")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=None, help="folder (default: a temp dir)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    gdf = make_nuclei(args.n)
    print(f"built {len(gdf):,} nuclei in {time.perf_counter() - t0:.1f} s; "
          f"machine load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for label, path in (
            ("QuPath GeoJSON", out / "bench.geojson"),
            ("QuPath GeoJSON .zip", out / "bench.geojson.zip"),
        ):
            t, c = time.perf_counter(), time.process_time()
            write_qupath_geojson(gdf, path, classes=CLASSES)
            report(label, len(gdf), time.perf_counter() - t, time.process_time() - c, path)
        t, c = time.perf_counter(), time.process_time()
        path = write_geoparquet(gdf, out / "bench.parquet", metadata={"classes": CLASSES.to_dict()})
        report("GeoParquet", len(gdf), time.perf_counter() - t, time.process_time() - c, path)


if __name__ == "__main__":
    main()

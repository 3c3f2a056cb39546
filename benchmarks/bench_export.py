"""Export speed: N nuclei (default 1 M) to QuPath GeoJSON (plain and zipped) and GeoParquet,
optionally read back by QuPath's own reader.

    python benchmarks/bench_export.py [--n 1000000] [--out DIR]
        [--qupath-read 0.6.0 [--qupath-read 0.5.1]] [--java-heap 12g]

``--qupath-read BUILD`` reads the zipped file with ``qupath-geojson-check`` (QuPath's
``PathIO.readObjects``; ``$WSI_STNUC_QUPATH_CHECK`` or ``../shared/tools/qupath``) and prints
the objects it returned, its wall time and the Java process's peak memory.

Nuclei are 17-vertex ellipses with the full NucleusTable columns (ids, centroids, class,
probabilities, six features), as `wsi-stnuc infer` writes them. Goal: GeoJSON <= 20 s for 1 M.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
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


def qupath_check() -> Path:
    env = os.environ.get("WSI_STNUC_QUPATH_CHECK")
    here = Path(__file__).resolve().parents[1]
    return Path(env) if env else here.parent / "shared" / "tools" / "qupath" / "qupath-geojson-check"


# run a command and print its peak RSS (KiB) last on stderr: a fresh parent per read, so the
# figure is that read's and not the largest child of the benchmark so far
_PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
         "sys.exit(r.returncode)")  # fmt: skip


def qupath_read(path: Path, build: str, heap: str, n: int) -> None:
    """Read ``path`` with QuPath's reader (no hierarchy: readObjects only) in a child process."""
    env = {**os.environ, "QUPATH_VERSION": build, "QUPATH_CHECK_JAVA_OPTS": f"-Xmx{heap}"}
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", _PEAK, str(qupath_check()), str(path)],
                         capture_output=True, text=True, env=env)  # fmt: skip
    wall = time.perf_counter() - t
    peak = int(res.stderr.strip().splitlines()[-1]) / 2**20  # GiB
    line = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else "{}"
    summary = json.loads(line)
    error = (summary.get("error") or {}).get("message") or res.stderr.strip()[-300:]
    ids, rois = summary.get("ids") or {}, summary.get("rois") or {}
    whole = summary.get("ok") and summary.get("n_objects") == n == ids.get("kept_from_file")
    whole = whole and rois.get("all_non_null_and_valid") and not rois.get("empty")
    print(f"QuPath {build} read   wall {wall:6.1f} s  read {summary.get('seconds_read', 0):6.1f} s  "
          f"peak RSS {peak:5.1f} GiB (-Xmx{heap})  objects {summary.get('n_objects')} of {n}, "
          f"ids kept {ids.get('kept_from_file')}, valid ROIs {rois.get('valid')}  "
          f"{'ok' if whole else 'FAILED: ' + str(error)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=None, help="folder (default: a temp dir)")
    parser.add_argument("--qupath-read", action="append", default=[], metavar="BUILD",
                        help="read the zipped file with QuPath's reader of this build")  # fmt: skip
    parser.add_argument("--java-heap", default="12g", help="-Xmx of QuPath's reader")
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
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"benchmark process peak RSS {peak:.1f} GiB (the table, its geometries and the writers)")
        del gdf  # QuPath's reader needs the memory more
        for build in args.qupath_read:
            qupath_read(out / "bench.geojson.zip", build, args.java_heap, args.n)


if __name__ == "__main__":
    main()

"""Speed of the metrics at slide scale (synthetic nuclei; figures only, no assertions).

    python benchmarks/bench_metrics.py [--nuclei 200000] [--raster 4096]

Polygon path: ``evaluate_polygons`` on N reference nuclei (jittered discs on a grid) against a
prediction that shifts, resizes, drops 5 % and adds 5 % false nuclei. Raster path:
``evaluate_instances`` on one square label image with the same kind of nuclei. Timings are
wall-clock on whatever the machine is doing (the project machine is shared and loaded).
"""

from __future__ import annotations

import argparse
import time

import geopandas as gpd
import numpy as np
import shapely

from wsi_stnuc.evaluation.metrics import evaluate_instances, evaluate_polygons


def _discs(n: int, rng: np.random.Generator, spacing: float = 20.0):
    side = int(np.ceil(np.sqrt(n)))
    gx, gy = np.meshgrid(np.arange(side), np.arange(side))
    xy = np.stack([gx.ravel(), gy.ravel()], 1)[:n] * spacing + rng.uniform(-2, 2, (n, 2))
    r = rng.uniform(4, 7, n)
    return xy, r


def polygons(n: int, rng: np.random.Generator) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    xy, r = _discs(n, rng)
    ref = shapely.buffer(shapely.points(xy), r, quad_segs=4)
    keep = rng.random(n) > 0.05
    pxy = xy[keep] + rng.normal(0, 1.0, (keep.sum(), 2))
    pred = shapely.buffer(
        shapely.points(pxy), r[keep] * rng.uniform(0.85, 1.15, keep.sum()), quad_segs=4
    )
    extra = shapely.buffer(shapely.points(xy[: n // 20] + 10.0), 3.0, quad_segs=4)
    cls = np.array(["epithelial", "inflammatory", "connective"])
    ref_gdf = gpd.GeoDataFrame({"c": cls[rng.integers(0, 3, n)]}, geometry=ref)
    pred_c = np.concatenate([ref_gdf["c"].to_numpy()[keep], cls[rng.integers(0, 3, n // 20)]])
    flip = rng.random(len(pred_c)) < 0.2
    pred_c[flip] = cls[rng.integers(0, 3, flip.sum())]
    pred_gdf = gpd.GeoDataFrame({"c": pred_c}, geometry=np.concatenate([pred, extra]))
    return ref_gdf, pred_gdf


def raster(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from skimage.segmentation import expand_labels

    n = (size // 20) ** 2
    xy, _ = _discs(n, rng)
    t = np.zeros((size, size), np.int32)
    p = np.zeros((size, size), np.int32)
    ij = np.clip(np.round(xy).astype(int), 0, size - 1)
    t[ij[:, 1], ij[:, 0]] = np.arange(1, n + 1)
    pij = np.clip(ij + rng.integers(-1, 2, ij.shape), 0, size - 1)
    p[pij[:, 1], pij[:, 0]] = np.arange(1, n + 1)
    return expand_labels(t, 5), expand_labels(p, 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nuclei", type=int, default=200_000)
    parser.add_argument("--raster", type=int, default=4096)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    ref, pred = polygons(args.nuclei, rng)
    t0 = time.perf_counter()
    r = evaluate_polygons(ref, pred, mpp=0.25, class_column="c")
    dt = time.perf_counter() - t0
    print(
        f"polygons: {len(ref):,} ref vs {len(pred):,} pred nuclei: {dt:.1f} s "
        f"({len(ref) / dt:,.0f} nuclei/s); PQ {r['pq']:.3f} F1d {r['f1d']:.3f} mPQ+ "
        f"{r['mpq_plus']:.3f}"
    )
    t, p = raster(args.raster, rng)
    t0 = time.perf_counter()
    r = evaluate_instances(t, p, mpp=0.25)
    dt = time.perf_counter() - t0
    print(
        f"raster: {args.raster}^2 px, {r['n_true']:,} nuclei: {dt:.1f} s "
        f"({t.size / 1e6 / dt:.1f} Mpx/s); PQ {r['pq']:.3f} AJI {r['aji']:.3f}"
    )


if __name__ == "__main__":
    main()

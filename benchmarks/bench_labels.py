"""Label building at slide scale: 1 M generated cells through the whole ST -> LabelSet chain.

Stages timed: nucleus vertex table (parquet, 13 vertices per nucleus as Xenium writes them)
-> polygons (vectorised) -> QC -> transform to slide pixels -> cell typing (marker panel,
per cell: ``smooth_k=0``) -> LabelSet GeoParquet. Goal: <= 60 s on 2 cores.

    python benchmarks/bench_labels.py [--cells 1000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from wsi_stnuc.classes import load_taxonomy
from wsi_stnuc.st.align import microns_to_slide_matrix
from wsi_stnuc.st.bundle import STBundle
from wsi_stnuc.st.labels import build_labelset, write_labelset
from wsi_stnuc.st.panels import Panel
from wsi_stnuc.st.xenium import read_boundaries

PANEL = Panel(
    "bench",
    {
        "T": ["CD3E", "CD3D", "TRAC", "CD2", "IL7R"],
        "Malignant": ["EPCAM", "KRT8", "ERBB2", "CDH1", "KRT7"],
        "Fibroblast": ["LUM", "POSTN", "DCN", "COL1A1", "PDGFRA"],
        "Macrophage": ["CD68", "CD163", "C1QA", "AIF1", "MRC1"],
    },
)
N_VERT = 13


def generate(n: int, seed: int = 0):
    """Vertex table (pyarrow), counts (CSR) and gene names for ``n`` cells on a grid."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    gx, gy = np.divmod(np.arange(n), side)
    cx = 10.0 + gx * 12.0 + rng.uniform(-2, 2, n)
    cy = 10.0 + gy * 12.0 + rng.uniform(-2, 2, n)
    r = rng.uniform(2.5, 5.0, n)
    ang = np.linspace(0, 2 * np.pi, N_VERT)  # last vertex repeats the first
    vx = (cx[:, None] + r[:, None] * np.cos(ang)).ravel()
    vy = (cy[:, None] + r[:, None] * np.sin(ang)).ravel()
    ids = np.char.add("c", np.arange(n).astype(str))
    table = pa.table(
        {
            "cell_id": pa.array(np.repeat(ids, N_VERT)),
            "vertex_x": vx.astype(np.float32),
            "vertex_y": vy.astype(np.float32),
        }
    )
    genes = [g for gs in PANEL.types.values() for g in gs] + [f"HK{i}" for i in range(30)]
    types = rng.integers(0, len(PANEL.types), n)
    # ~60 counts per cell: 30 on the cell's own markers, the rest spread over all genes
    n_genes = len(genes)
    own = rng.poisson(6.0, (n, 5)).astype(np.float32)
    background = rng.poisson(30.0 / n_genes, (n, n_genes)).astype(np.float32)
    cols = (types[:, None] * 5 + np.arange(5)[None, :]).ravel()
    rows = np.repeat(np.arange(n), 5)
    x = sp.csr_matrix(background) + sp.csr_matrix((own.ravel(), (rows, cols)), (n, n_genes))
    return table, x.tocsr(), genes, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=1_000_000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    table, x, genes, ids = generate(args.cells)
    print(
        f"generated {args.cells:,} cells, {table.num_rows:,} vertices "
        f"in {time.perf_counter() - t0:.1f} s (not counted)"
    )
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        vpath = Path(tmp) / "nucleus_boundaries.parquet"
        pq.write_table(table, vpath)
        del table
        t = time.perf_counter()
        nuclei = read_boundaries(vpath)  # read + vertex table -> polygons
        times["read vertices + polygons"] = time.perf_counter() - t
        adata = ad.AnnData(x, obs=pd.DataFrame(index=ids), var=pd.DataFrame(index=genes))
        bundle = STBundle(adata, gpd.GeoDataFrame(nuclei), None, 0.2125, vpath, {})
        m = np.array([[0.2125 / 0.25, 0.0, 100.0], [0.0, 0.2125 / 0.25, 50.0], [0, 0, 1.0]])
        a = microns_to_slide_matrix(np.linalg.inv(m), 0.2125)  # H&E at 0.25 µm/px

        import wsi_stnuc.st.labels as labels_mod

        timed = {}
        for name in ("qc_cells", "type_cells", "transform_geometries"):
            fn = getattr(labels_mod, name)

            def wrap(*a_, _fn=fn, _name=name, **kw):
                s = time.perf_counter()
                out = _fn(*a_, **kw)
                timed[_name] = time.perf_counter() - s
                return out

            setattr(labels_mod, name, wrap)
        t = time.perf_counter()
        gdf, report = build_labelset(
            bundle, None, a, load_taxonomy(), panel=PANEL, smooth_k=0, refine=False
        )
        total_build = time.perf_counter() - t
        times["QC"] = timed["qc_cells"]
        times["cell typing (panel)"] = timed["type_cells"]
        times["transform to slide px"] = timed["transform_geometries"]
        times["other (join, classes)"] = (
            total_build - timed["qc_cells"] - timed["type_cells"] - timed["transform_geometries"]
        )
        t = time.perf_counter()
        out = write_labelset(gdf, Path(tmp) / "labels.parquet", load_taxonomy().classes)
        times["write LabelSet GeoParquet"] = time.perf_counter() - t
        size = out.stat().st_size
    total = sum(times.values())
    for k, v in times.items():
        print(f"  {k:<28s} {v:7.2f} s")
    print(f"  {'total':<28s} {total:7.2f} s  ({len(gdf):,} labels, {size / 1e6:.0f} MB)")
    print(report)
    print("(one run on a shared, loaded 2-core machine)")


if __name__ == "__main__":
    main()

"""Cell-typing accuracy on real Xenium breast cells against expert cell types.

Data: ``expression/xenium_breast_cells.csv.gz`` from the shared data folder (3,329 cells x
280 genes, expert ``cell_type``). Predicted fine types and expert types are both mapped to
image classes with the default taxonomy; the figure is the macro-F1 over those classes (all
cells, ``unknown`` counted as wrong), plus coverage and macro-F1 of the cells kept at
``--min-confidence``. Label transfer uses a random half as reference and scores the other
half (three splits; mean shown). The "no refinement" rows switch self-training off
(``refine=False``) to show what it adds.

    python benchmarks/bench_celltype.py [--min-confidence 0.2]
"""

from __future__ import annotations

import argparse
import time

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import f1_score

from wsi_stnuc.classes import UNKNOWN, load_taxonomy
from wsi_stnuc.io_utils import shared_data_dir
from wsi_stnuc.st.celltype import image_classes, type_cells


def load() -> ad.AnnData:
    path = shared_data_dir() / "expression" / "xenium_breast_cells.csv.gz"
    if not path.exists():
        raise SystemExit(f"data not found: {path} (set WSI_STNUC_DATA)")
    df = pd.read_csv(path)
    genes = [c for c in df.columns if c not in ("cell_id", "cell_type")]
    return ad.AnnData(
        sp.csr_matrix(df[genes].to_numpy(np.float32)),
        obs=pd.DataFrame(
            {"cell_type": df["cell_type"].astype(str).to_numpy()},
            index=df["cell_id"].astype(str).to_numpy(),
        ),
        var=pd.DataFrame(index=genes),
    )


def score(types: pd.DataFrame, expert: pd.Series, tax, min_conf: float) -> dict:
    truth = np.asarray(tax.map_types(expert.astype(str)))
    all_pred = image_classes(types, tax, min_confidence=0.0).to_numpy()
    kept_pred = image_classes(types, tax, min_confidence=min_conf).to_numpy()
    labels = list(tax.classes.names)
    keep = kept_pred != UNKNOWN
    return {
        "macro_f1_all": f1_score(truth, all_pred, labels=labels, average="macro"),
        "coverage": keep.mean(),
        "macro_f1_kept": f1_score(truth[keep], kept_pred[keep], labels=labels, average="macro"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-confidence", type=float, default=0.2)
    args = ap.parse_args()
    adata = load()
    tax = load_taxonomy()
    rows = []
    runs = [
        ("panel, kNN-smoothed seeds + self-training", dict(method="panel")),
        ("panel, per-cell seeds + self-training", dict(method="panel", smooth_k=0)),
        ("cluster (k-means fallback) + vote + self-training", dict(method="cluster")),
        ("panel, kNN-smoothed, no refinement", dict(method="panel", refine=False)),
        ("panel, per cell, no refinement", dict(method="panel", smooth_k=0, refine=False)),
        ("cluster + vote, no refinement", dict(method="cluster", refine=False)),
    ]
    for name, kw in runs:
        t0 = time.perf_counter()
        types = type_cells(adata, kw.pop("method"), panel="human_breast", **kw)
        dt = time.perf_counter() - t0
        rows.append(
            {
                "method": name,
                **score(types, adata.obs["cell_type"], tax, args.min_confidence),
                "seconds": dt,
            }
        )
    res, dts = [], []
    for seed in range(3):
        half = np.random.default_rng(seed).random(adata.n_obs) < 0.5
        ref, query = adata[half].copy(), adata[~half].copy()
        t0 = time.perf_counter()
        types = type_cells(query, "transfer", reference=ref)
        dts.append(time.perf_counter() - t0)
        res.append(score(types, query.obs["cell_type"], tax, args.min_confidence))
    rows.append(
        {
            "method": "transfer (random half as reference, 3 splits)",
            **pd.DataFrame(res).mean().to_dict(),
            "seconds": float(np.mean(dts)),
        }
    )
    table = pd.DataFrame(rows).set_index("method")
    print(
        f"{adata.n_obs} cells x {adata.n_vars} genes; image classes {tax.classes.names}; "
        f"kept = confidence >= {args.min_confidence}"
    )
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    print("(timings on a shared, loaded 2-core machine)")


if __name__ == "__main__":
    main()

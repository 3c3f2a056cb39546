"""Accuracy of the classical baseline on real annotated H&E (CoNSeP patches, MoNuSeg tiles).

    python benchmarks/bench_baseline.py [--every N]

Prints PQ / DQ / SQ / AJI / AJI+ / Dice (mean over images, as the datasets' papers report) and
detection F1 (TP/FP/FN pooled over images; radius 3 µm) plus the time per megapixel. The data
live in ``$WSI_STNUC_DATA`` or ``../shared/data`` (``nuclei/consep_train``,
``nuclei/monuseg_train``); both are *training* sets of those datasets, which is fine for a method
that learns nothing. Timings depend on the machine's load.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from wsi_stnuc.evaluation.annotated import load_consep, load_monuseg
from wsi_stnuc.evaluation.baseline import classical_instances
from wsi_stnuc.evaluation.metrics import evaluate_instances
from wsi_stnuc.io_utils import shared_data_dir

PER_IMAGE = ("pq", "dq", "sq", "aji", "aji_plus", "dice")


def score(images) -> dict:
    rows, det = [], np.zeros(3)
    pixels, seconds = 0, 0.0
    for im in images:
        t0 = time.perf_counter()
        pred = classical_instances(im.rgb, im.mpp)
        seconds += time.perf_counter() - t0
        pixels += im.inst.size
        r = evaluate_instances(im.inst, pred, mpp=im.mpp, radius_um=3.0)
        rows.append([r[k] for k in PER_IMAGE])
        det += (r["tp_d"], r["fp_d"], r["fn_d"])
    out = dict(zip(PER_IMAGE, np.nanmean(np.asarray(rows, float), axis=0), strict=True))
    tp, fp, fn = det
    out["f1d"] = 2 * tp / (2 * tp + fp + fn)
    out["n_images"] = len(rows)
    out["s_per_mpx"] = seconds / (pixels / 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=1, help="use every N-th CoNSeP patch")
    args = parser.parse_args()
    root = shared_data_dir() / "nuclei"
    if not root.is_dir():
        raise SystemExit(f"real data not found under {root}")
    consep_dir = root / "consep_train"
    names = sorted(p.stem for p in (consep_dir / "images").glob("*.jpg"))[:: args.every]
    sets = {
        "CoNSeP train patches (256 px, 40x)": load_consep(consep_dir, names),
        "MoNuSeg train tiles (1000 px, 40x)": load_monuseg(root / "monuseg_train"),
    }
    print("classical baseline (H deconvolution, Otsu, distance watershed), detection radius 3 µm")
    print(f"{'dataset':<36}{'n':>5}" + "".join(f"{k:>9}" for k in (*PER_IMAGE, "f1d", "s/Mpx")))
    for label, images in sets.items():
        r = score(images)
        print(
            f"{label:<36}{r['n_images']:>5}"
            + "".join(f"{r[k]:>9.3f}" for k in (*PER_IMAGE, "f1d", "s_per_mpx"))
        )


if __name__ == "__main__":
    main()

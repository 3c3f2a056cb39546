"""Accuracy of ST supervision vs manual labels vs the classical baseline, on real H&E.

    python benchmarks/bench_accuracy.py [--minutes 4 | --steps N] [--mpps 0.5 0.25]
        [--models manual st] [--device cpu|cuda] [--workers 0] [--threads 1] [--out DIR]

CoNSeP train patches (432 x 256², ~0.25 µm/px) are split by source image: ~25 % of the source
images are held back whole, so no held-back patch has a neighbour of the same image in training.
The same network (NucleiNet defaults: width/batch 8/4 on CPU, 32/16 on CUDA) is trained with the
same budget (``--steps``, or wall minutes)

1. on the manual CoNSeP labels of the training images (other -> unknown): upper reference;
2. on ST labels: a paired bundle of the same training images with real Xenium breast
   expression (one half of the real cells; the other half is the typing reference) and
   ``STNoise.realistic()``, taken through the real chain: ``read_xenium`` -> registration
   matrix from the alignment CSV + automatic refinement -> QC -> kNN label transfer ->
   default taxonomy (``unknown`` below confidence 0.2) -> LabelSet -> ``build_patch_dataset``
   from the mosaic slide;

and compared with (3) the classical baseline. Scored on the held-back CoNSeP patches (PQ, AJI,
F1d at 3 µm, F1c epithelial / inflammatory / spindle) and on the 13 MoNuSeg train tiles (other
organs, no classes), at the images' native resolution, for each model resolution in ``--mpps``
(images and labels resampled; training patches cover 64 µm). Inference time is prediction +
post-processing per native megapixel (0.25 µm/px) on the MoNuSeg tiles. ``--models`` picks the
networks to train (one process per model runs several side by side on a GPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from _paired import (
    add_training_args,
    budget_label,
    consep_codes,
    data_paths,
    fmt,
    manual_dataset,
    score_model,
    split_by_source,
    st_dataset,
    st_labels,
    train,
    train_steps,
    with_classes,
)

from wsi_stnuc.classes import load_taxonomy
from wsi_stnuc.evaluation.annotated import load_consep, load_monuseg

FIELD_UM = 64.0  # training patch side in µm, at every model resolution


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_args(ap)
    ap.add_argument("--mpps", type=float, nargs="+", default=[0.5, 0.25])
    ap.add_argument("--models", nargs="+", choices=["manual", "st"], default=["manual", "st"])
    ap.add_argument("--no-baseline", action="store_true", help="skip the classical baseline")
    ap.add_argument("--held-fraction", type=float, default=0.25)
    ap.add_argument("--val-sources", type=int, default=3, help="manual: sources for validation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    consep_dir, monuseg_dir, expression = data_paths()
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_accuracy_"))
    work.mkdir(parents=True, exist_ok=True)

    consep = load_consep(consep_dir)
    monuseg = load_monuseg(monuseg_dir)
    train_ims, held = split_by_source(consep, args.held_fraction, args.seed)
    train_sources = sorted({im.source_image for im in train_ims})
    rng = np.random.default_rng(args.seed + 1)
    val_sources = set(rng.permutation(train_sources)[: args.val_sources].tolist())
    print(f"CoNSeP: {len(train_ims)} training patches ({len(train_sources)} source images), "
          f"{len(held)} held back ({len({im.source_image for im in held})} source images: "
          f"{', '.join(sorted({im.source_image for im in held}))}); MoNuSeg: {len(monuseg)} "
          f"tiles")  # fmt: skip

    taxonomy = load_taxonomy()
    classes = taxonomy.classes
    if "st" in args.models:
        st = st_labels(train_ims, expression, work / "st", args.seed, args.bundle_compression)
        st_lab = with_classes(st.labels, taxonomy, 0.2)
        print(f"paired bundle: {st.bundle.n_nuclei} annotated nuclei -> {st.bundle.n_cells} ST "
              f"cells ({st.seconds['bundle']:.0f} s); "
              f"ST chain {st.seconds['st_chain']:.0f} s")  # fmt: skip
        print(str(st.report))

    results: list[dict] = []

    def record(name: str, mpp: float | None, budget: str, ckpt: Path | None) -> None:
        t0 = time.perf_counter()
        dev = "cpu" if ckpt is None else args.device
        on_consep = score_model(
            ckpt, held, threads=args.threads, code_of_class=consep_codes(classes), device=dev
        )
        on_monuseg = score_model(ckpt, monuseg, threads=args.threads, device=dev)
        row = {"model": name, "mpp": mpp, "budget": budget, "consep": on_consep.metrics,
               "monuseg": on_monuseg.metrics,
               "steps": None if ckpt is None else train_steps(ckpt),
               "s_per_mpx": on_monuseg.seconds / on_monuseg.megapixels,
               "cpu_s_per_mpx": on_monuseg.cpu_seconds / on_monuseg.megapixels}  # fmt: skip
        results.append(row)
        print(f"  scored {name} @ {mpp}: CoNSeP PQ {fmt(on_consep.metrics['pq'])}, MoNuSeg PQ "
              f"{fmt(on_monuseg.metrics['pq'])} ({time.perf_counter() - t0:.0f} s)",
              flush=True)  # fmt: skip

    budget = budget_label(args)
    names = {"manual": "manual CoNSeP labels", "st": "ST labels (paired)"}
    for mpp in args.mpps:
        patch = int(round(FIELD_UM / mpp / 16)) * 16
        out = work / f"mpp{mpp:g}"
        for key in args.models:
            t0 = time.perf_counter()
            if key == "manual":
                ds = manual_dataset(train_ims, val_sources, classes, mpp, out / "manual.zarr")
            else:
                ds = st_dataset(st.bundle, st_lab, classes, mpp, patch, out / "st.zarr")
            t1 = time.perf_counter()
            ckpt = train(ds, out / key, args, args.seed)
            print(f"[{mpp} µm/px] {names[key]}: dataset ({patch} px patches) {t1 - t0:.0f} s, "
                  f"trained in {time.perf_counter() - t1:.0f} s", flush=True)  # fmt: skip
            record(names[key], mpp, budget, ckpt)
    if not args.no_baseline:
        record("classical baseline", None, "-", None)
    (work / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print_table(results, args)


def print_table(results: list[dict], args) -> None:
    print()
    print("| model | model µm/px | train budget (steps) | CoNSeP PQ | AJI | F1d | F1c epi | "
          "F1c infl | F1c spindle | MoNuSeg PQ | AJI | F1d | s/Mpx (CPU s/Mpx) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        c, m = r["consep"], r["monuseg"]
        f1c = c.get("f1c") or {}
        mpp = "native 0.25" if r["mpp"] is None else f"{r['mpp']:g}"
        steps = f" ({r['steps']})" if r["steps"] else ""
        print(f"| {r['model']} | {mpp} | {r['budget']}{steps} | {fmt(c['pq'])} | {fmt(c['aji'])} | "
              f"{fmt(c['f1d'])} | {fmt(f1c.get(3))} | {fmt(f1c.get(2))} | {fmt(f1c.get(4))} | "
              f"{fmt(m['pq'])} | {fmt(m['aji'])} | {fmt(m['f1d'])} | "
              f"{r['s_per_mpx']:.2f} ({r['cpu_s_per_mpx']:.2f}) |")  # fmt: skip
    base = next((r["monuseg"]["pq"] for r in results if r["mpp"] is None), float("nan"))
    print()
    for mpp in args.mpps:
        by = {r["model"].split()[0]: r for r in results if r["mpp"] == mpp}
        if {"manual", "ST"} <= set(by):
            man, st = by["manual"]["monuseg"]["pq"], by["ST"]["monuseg"]["pq"]
            print(f"{mpp:g} µm/px: MoNuSeg PQ ST / manual = {st / man:.2f} (goal >= 0.95); "
                  f"ST - baseline = {st - base:+.3f}")  # fmt: skip


if __name__ == "__main__":
    main()

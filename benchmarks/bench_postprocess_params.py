"""Sweep the post-processing thresholds of trained checkpoints on real annotated H&E.

    python benchmarks/bench_postprocess_params.py CHECKPOINT... [--energy 0.02 0.05 0.4]
        [--np 0.5] [--threads 2]

The network's heads are computed once per image; ``heads_to_instances`` then runs for every
(``np_threshold``, ``energy_threshold``) pair. Three image sets, all from
``../shared/data/nuclei`` with the split of ``bench_accuracy.py``: the validation images of the
CoNSeP training split (3 source images; **choose on these**), the held-back CoNSeP images and
the MoNuSeg tiles (report only). Prints PQ and AJI per set. The default ``energy_threshold``
(0.05) was chosen with this script on the H200 checkpoints of ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
from _paired import data_paths, fmt, inst_to_native, split_by_source, to_model_grid

from wsi_stnuc.evaluation.annotated import load_consep, load_monuseg
from wsi_stnuc.evaluation.metrics import compare_instances, summarize


def image_sets(held_fraction: float, val_sources: int, seed: int) -> dict[str, list]:
    consep_dir, monuseg_dir, _ = data_paths()
    train, held = split_by_source(load_consep(consep_dir), held_fraction, seed)
    sources = sorted({im.source_image for im in train})
    val = set(np.random.default_rng(seed + 1).permutation(sources)[:val_sources].tolist())
    return {
        "CoNSeP val": [im for im in train if im.source_image in val],
        "CoNSeP held-back": held,
        "MoNuSeg": load_monuseg(monuseg_dir),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--energy", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2, 0.4])
    ap.add_argument("--np", dest="np_thresholds", type=float, nargs="+", default=[0.5])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--held-fraction", type=float, default=0.25)
    ap.add_argument("--val-sources", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from wsi_stnuc.model.checkpoint import load_checkpoint
    from wsi_stnuc.model.net import predict
    from wsi_stnuc.model.postprocess import heads_to_instances

    sets = image_sets(args.held_fraction, args.val_sources, args.seed)
    for ckpt in args.checkpoints:
        model, meta = load_checkpoint(ckpt, device=args.device)
        mpp = float(meta["mpp"])
        t0 = time.perf_counter()
        heads = {
            name: [
                predict(
                    model,
                    to_model_grid(im.rgb, im.mpp, mpp)[None],
                    device=args.device,
                    num_threads=args.threads,
                )  # fmt: skip
                for im in images
            ]
            for name, images in sets.items()
        }
        print(f"{ckpt} ({mpp:g} µm/px): heads in {time.perf_counter() - t0:.0f} s")
        print("| np_threshold | energy_threshold | " + " | ".join(
            f"{name} PQ | AJI" for name in sets) + " |")  # fmt: skip
        print("|---|---|" + "---|---|" * len(sets))
        for np_t, energy in itertools.product(args.np_thresholds, args.energy):
            cells = []
            for name, images in sets.items():
                comps = []
                for im, h in zip(images, heads[name], strict=True):
                    inst, _ = heads_to_instances(h["np"][0], h["hv"][0], h["tp"][0],
                                                 np_threshold=np_t, energy_threshold=energy)  # fmt: skip
                    pred = inst_to_native(inst, im.rgb.shape[:2], im.mpp, mpp)
                    comps.append(compare_instances(im.inst, pred))
                s = summarize(comps, mpp=[im.mpp for im in images])
                cells += [fmt(s["pq"]), fmt(s["aji"])]
            print(f"| {np_t:g} | {energy:g} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

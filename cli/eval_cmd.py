"""CLI: ``wsi-stnuc evaluate PRED REF`` — segmentation/detection/classification metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import numpy as np

# Rows of the printed table: (key, label). Class figures follow per class.
_ROWS = (
    ("pq", "PQ"),
    ("dq", "DQ"),
    ("sq", "SQ"),
    ("aji", "AJI"),
    ("aji_plus", "AJI+"),
    ("dice", "Dice"),
    ("f1d", "F1 detection"),
    ("precision_d", "precision"),
    ("recall_d", "recall"),
    ("mpq", "mPQ"),
    ("mpq_plus", "mPQ+"),
    ("acc_c", "class accuracy"),
)


def _jsonable(value):
    """Metrics as plain JSON: numpy scalars to Python, NaN to null, dict keys to str."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_table(result: dict) -> str:
    """The figures of :func:`wsi_stnuc.evaluation.eval_io.evaluate` as an aligned text table."""
    images = result.get("n_images", 1)
    lines = [
        (f"{images} images (PQ, AJI, Dice: mean over images); " if images > 1 else "")
        + f"reference nuclei {result['n_true']}, predicted {result['n_pred']} "
        f"({result.get('mode', '?')} matching, IoU > {result['iou_threshold']:g}; detection radius "
        f"{result['radius_um']:g} µm = {result['radius_um'] / result['mpp']:.1f} px "
        f"at {result['mpp']:g} µm/px)",
        f"TP {result['tp']}  FP {result['fp']}  FN {result['fn']}  (detection: TP "
        f"{result['tp_d']}  FP {result['fp_d']}  FN {result['fn_d']})",
    ]
    for key, label in _ROWS:
        if key in result:
            lines.append(f"  {label:<16}{_fmt(result[key])}")
    for cls, f1c in result.get("f1c", {}).items():
        pq_c = result.get("pq_per_class", {}).get(cls)
        lines.append(f"  class {str(cls):<14} F1c {_fmt(f1c)}   PQ+ {_fmt(pq_c)}")
    return "\n".join(lines)


@click.command("evaluate")
@click.argument("pred", type=click.Path(exists=True, path_type=Path))
@click.argument("ref", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the figures to this JSON file.",
)
@click.option(
    "--mpp",
    type=float,
    default=None,
    help="µm per pixel of both inputs (default: read from the files).",
)
@click.option(
    "--radius-um",
    type=float,
    default=3.0,
    show_default=True,
    help="Detection matching radius in µm (12 px at 40x).",
)
@click.option(
    "--class-column",
    default=None,
    help="Class column of polygon inputs (default: class_name / image_class).",
)
@click.option(
    "--iou",
    "iou_threshold",
    type=float,
    default=0.5,
    show_default=True,
    help="IoU above which two nuclei match for PQ.",
)
def evaluate_cmd(
    pred: Path,
    ref: Path,
    json_out: Path | None,
    mpp: float | None,
    radius_um: float,
    class_column: str | None,
    iou_threshold: float,
) -> None:
    """Score predicted nuclei PRED against reference nuclei REF.

    Either may be GeoParquet, QuPath GeoJSON, a label image (TIFF/PNG/NPY, CoNSeP-style NPZ)
    or MoNuSeg XML. Prints PQ/DQ/SQ, AJI, AJI+, Dice, detection F1 and, with classes on both
    sides, per-class F1c, mPQ and mPQ+. With two folders, files are paired by name and the
    figures are given per image and over the set (means over images; pooled detection pairs).
    """
    from wsi_stnuc.evaluation.eval_io import evaluate_set, load_instances, pair_files
    from wsi_stnuc.io_utils import atomic_path

    if pred.is_dir() != ref.is_dir():
        raise click.UsageError("PRED and REF must both be files or both be folders")
    files = pair_files(pred, ref) if ref.is_dir() else [(pred, ref)]
    pairs = [
        (
            load_instances(p, mpp=mpp, class_column=class_column),
            load_instances(r, mpp=mpp, class_column=class_column),
        )
        for p, r in files
    ]
    result = evaluate_set(pairs, mpp=mpp, radius_um=radius_um, iou_threshold=iou_threshold)
    if ref.is_dir():
        click.echo(format_images(result["images"]))
        doc = result
    else:
        doc = {**result["summary"], "pred": str(pred), "ref": str(ref)}
    click.echo(format_table(result["summary"]))
    if json_out is not None:
        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps(_jsonable(doc), indent=2) + "\n")
        click.echo(f"wrote {json_out}")


def format_images(rows: list[dict]) -> str:
    """One line per image: name, counts and the main figures."""
    keys = ("pq", "aji", "dice", "f1d")
    lines = [f"{'image':<32}{'ref':>6}{'pred':>6}" + "".join(f"{k:>8}" for k in keys)]
    for row in rows:
        name = Path(row["ref"]).name
        lines.append(
            f"{name[:31]:<32}{row['n_true']:>6}{row['n_pred']:>6}"
            + "".join(f"{_fmt(row[k]):>8}" for k in keys)
        )
    return "\n".join(lines)


COMMANDS = [evaluate_cmd]

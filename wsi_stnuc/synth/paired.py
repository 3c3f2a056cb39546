"""A semi-synthetic paired bundle from real annotated H&E and real Xenium expression.

Real annotated images (CoNSeP, MoNuSeg, see :mod:`wsi_stnuc.evaluation.annotated`) are laid out in one
mosaic slide; every annotated nucleus gets the expression profile of a real Xenium cell whose
expert type matches the nucleus' annotated class; the nuclei go through the ST noise model and
are written as a Xenium bundle registered to the mosaic by a known affine. The images are real,
the expression is real, only their pairing is made up: the chain (registration, QC, typing,
label transfer, training) can be run and scored against manual annotation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

from wsi_stnuc.classes import UNKNOWN, load_taxonomy
from wsi_stnuc.errors import InputError
from wsi_stnuc.evaluation.annotated import AnnotatedImage
from wsi_stnuc.formats import Xenium
from wsi_stnuc.inference.stitch import instances_to_polygons
from wsi_stnuc.io_utils import atomic_path
from wsi_stnuc.slide.write import write_pyramidal_tiff
from wsi_stnuc.synth.bundle import (
    SLIDE_NAME,
    TRUTH_NAME,
    TRUTH_SOURCE,
    SyntheticBundle,
    write_truth,
)
from wsi_stnuc.synth.expression import N_NEGATIVE_CONTROLS
from wsi_stnuc.synth.noise import STNoise
from wsi_stnuc.synth.st_side import write_st_side

log = logging.getLogger(__name__)

# Annotated class -> fine Xenium types it may stand for; None = any type (class carries no type).
DEFAULT_CLASS_TO_TYPES: dict[str, tuple[str, ...] | None] = {
    "inflammatory": ("T", "B", "Plasma", "Macrophage", "Myeloid"),
    "epithelial": ("Malignant", "Epithelial"),
    "spindle": ("Fibroblast", "Endothelial"),
    "other": None,
    UNKNOWN: None,
}
EXPRESSION_TYPE_COLUMN = "cell_type"
EXPRESSION_ID_COLUMN = "cell_id"
PLACEMENTS_NAME = "placements.csv"
TRUTH_ANNOT_CLASS = "annotated_class"  # class name from the manual annotation
TRUTH_IMAGE = "image"  # annotated image the nucleus comes from
TRUTH_REFERENCE_CELL = "reference_cell"  # id of the real cell whose expression it carries
BREAST_PANEL = Path(__file__).resolve().parents[1] / "data" / "panel_human_breast.yaml"


@dataclass
class PairedBundle(SyntheticBundle):
    """A :class:`SyntheticBundle` plus where each source image went (``placements`` CSV:
    ``image, source_image, x0, y0, width, height`` in level-0 px)."""

    placements: Path | None = None


def read_expression(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Reference cells: (ids, types, counts cells x genes int32, genes) from a CSV with
    ``cell_id``, ``cell_type`` and one integer column per gene."""
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read expression CSV ({exc})") from exc
    if EXPRESSION_TYPE_COLUMN not in df.columns:
        raise InputError(path, f"no '{EXPRESSION_TYPE_COLUMN}' column")
    ids = (
        df[EXPRESSION_ID_COLUMN].astype(str).to_numpy()
        if EXPRESSION_ID_COLUMN in df.columns
        else np.arange(len(df)).astype(str)
    )
    genes = [c for c in df.columns if c not in (EXPRESSION_TYPE_COLUMN, EXPRESSION_ID_COLUMN)]
    values = df[genes]
    if not all(pd.api.types.is_numeric_dtype(t) for t in values.dtypes):
        raise InputError(path, "gene columns must be numeric counts")
    counts = np.rint(values.to_numpy(dtype=float)).astype(np.int32)
    if (counts < 0).any():
        raise InputError(path, "negative counts")
    return ids, df[EXPRESSION_TYPE_COLUMN].astype(str).to_numpy(), counts, genes


def layout_mosaic(
    shapes: Sequence[tuple[int, int]], gap: int, columns: int | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Top-left corners (x0, y0) of images on a grid with ``gap`` px of white around each."""
    n = len(shapes)
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    hs = np.array([s[0] for s in shapes])
    ws = np.array([s[1] for s in shapes])
    cell_h = np.zeros(rows, dtype=int)
    cell_w = np.zeros(columns, dtype=int)
    r, c = np.divmod(np.arange(n), columns)
    np.maximum.at(cell_h, r, hs)
    np.maximum.at(cell_w, c, ws)
    y_edges = gap + np.concatenate([[0], np.cumsum(cell_h + gap)])
    x_edges = gap + np.concatenate([[0], np.cumsum(cell_w + gap)])
    corners = np.stack([x_edges[c], y_edges[r]], axis=1)
    return corners, (int(y_edges[-1]), int(x_edges[-1]))


def sample_reference_cells(
    rng: np.random.Generator,
    annotated: np.ndarray,
    ref_types: np.ndarray,
    class_to_types: Mapping[str, Sequence[str] | None],
) -> np.ndarray:
    """Index of a reference cell for each nucleus, drawn among the types of its class.

    Within a class, types come at their reference frequency (a real cell is drawn uniformly
    from the pooled cells of the allowed types). Classes absent from the mapping, or mapped to
    ``None``, draw from all reference cells.
    """
    out = np.empty(len(annotated), dtype=np.int64)
    for cls in np.unique(annotated):
        sel = np.flatnonzero(annotated == cls)
        allowed = class_to_types.get(cls)
        pool = (
            np.arange(len(ref_types))
            if allowed is None
            else np.flatnonzero(np.isin(ref_types, list(allowed)))
        )
        if len(pool) == 0:
            raise ValueError(f"no reference cell of types {allowed} for class '{cls}'")
        out[sel] = pool[rng.integers(0, len(pool), len(sel))]
    return out


def _mosaic(images: Sequence[AnnotatedImage], gap: int) -> tuple[np.ndarray, np.ndarray]:
    corners, (h, w) = layout_mosaic([im.rgb.shape[:2] for im in images], gap)
    canvas = np.full((h, w, 3), 255, dtype=np.uint8)
    for im, (x0, y0) in zip(images, corners, strict=True):  # one paste per image
        ih, iw = im.rgb.shape[:2]
        canvas[y0 : y0 + ih, x0 : x0 + iw] = im.rgb
    return canvas, corners


def _nuclei_of(
    images: Sequence[AnnotatedImage], corners: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Level-0 polygons, annotated class names and image index of every annotated nucleus."""
    polys, classes, owner = [], [], []
    for i, (im, (x0, y0)) in enumerate(zip(images, corners, strict=True)):
        ids, p = instances_to_polygons(im.inst, float(x0), float(y0), 1.0, 1.0)
        ok = ~shapely.is_missing(p) & ~shapely.is_empty(p)
        polys.append(p[ok])
        classes.append(im.class_names_of(ids[ok]))
        owner.append(np.full(int(ok.sum()), i))
    return np.concatenate(polys), np.concatenate(classes), np.concatenate(owner)


def make_paired_bundle(
    images: Sequence[AnnotatedImage],
    expression_csv: str | Path,
    out_dir: str | Path,
    *,
    class_to_types: Mapping[str, Sequence[str] | None] | None = None,
    noise: STNoise | None = None,
    seed: int = 0,
    gap_px: int = 64,
    pixel_size: float = Xenium.DEFAULT_PIXEL_SIZE_UM,
    jpeg_quality: int = 95,
    compression: str = "jpeg",
    transcripts: bool = False,
) -> PairedBundle:
    """Write a mosaic slide of ``images``, a Xenium bundle of their nuclei, truth and placements.

    All images must share one resolution (their ``mpp``). ``noise`` defaults to
    :meth:`STNoise.mild`. The truth GeoParquet holds every annotated nucleus (level-0 px) with
    its annotated class, the sampled fine ``cell_type``, its ``image_class`` under the default
    taxonomy (``unknown`` for classes that stand for no type), the ST cell it ended up in, the
    reference cell its expression came from and its source image. ``compression``: the
    slide's tile codec (``"jpeg"`` at ``jpeg_quality``, like a scanner; ``"zlib"`` keeps the
    annotated pixels exactly and needs no JPEG codec).
    """
    if not images:
        raise ValueError("make_paired_bundle: no images")
    mpps = {round(im.mpp, 4) for im in images}
    if len(mpps) > 1:
        raise ValueError(f"make_paired_bundle: images have different resolutions {sorted(mpps)}")
    mpp = float(images[0].mpp)
    class_to_types = DEFAULT_CLASS_TO_TYPES if class_to_types is None else class_to_types
    noise = STNoise.mild() if noise is None else noise
    taxonomy = load_taxonomy()
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    ref_ids, ref_types, ref_counts, genes = read_expression(expression_csv)
    canvas, corners = _mosaic(images, gap_px)
    shape = canvas.shape[:2]
    slide = write_pyramidal_tiff(
        out / SLIDE_NAME,
        canvas,
        mpp,
        compression=compression,
        quality=jpeg_quality,
        description="wsi-stnuc paired bundle: real annotated H&E mosaic",
    )
    del canvas
    polygons, annotated, owner = _nuclei_of(images, corners)
    pick = sample_reference_cells(rng, annotated, ref_types, class_to_types)
    counts = ref_counts[pick]
    controls = rng.poisson(0.02, (len(pick), N_NEGATIVE_CONTROLS)).astype(np.int32)

    side = write_st_side(
        out,
        polygons,
        counts,
        controls,
        genes,
        mpp=mpp,
        shape=shape,
        noise=noise,
        rng=rng,
        pixel_size=pixel_size,
        id_start=0x2000,
        run_name=f"wsi-stnuc paired bundle seed {seed}",
        panel_name="real Xenium breast expression (paired by class)",
        transcripts=transcripts,
    )
    noisy = side.noisy
    # A class that stands for no type (CoNSeP "other", MoNuSeg) shows no known image class.
    fine = ref_types[pick].astype(object)
    typed = np.isin(annotated, [c for c, t in class_to_types.items() if t is not None])
    image_classes = np.where(typed, taxonomy.map_types(fine), UNKNOWN)
    names = np.array([im.name for im in images], dtype=object)
    sources = np.array([im.source_image for im in images], dtype=object)
    truth = write_truth(
        out / TRUTH_NAME,
        polygons,
        side.truth_ids,
        fine,
        taxonomy,
        noisy,
        side.st_ids,
        extra={
            TRUTH_ANNOT_CLASS: annotated,
            TRUTH_IMAGE: names[owner],
            TRUTH_SOURCE: sources[owner],
            TRUTH_REFERENCE_CELL: ref_ids[pick],
        },
        image_classes=image_classes,
    )
    placements = pd.DataFrame(
        {
            "image": names,
            "source_image": sources,
            "x0": corners[:, 0],
            "y0": corners[:, 1],
            "width": [im.rgb.shape[1] for im in images],
            "height": [im.rgb.shape[0] for im in images],
        }
    )
    with atomic_path(out / PLACEMENTS_NAME) as tmp:
        placements.to_csv(tmp, index=False)
    log.info(
        "paired bundle: %d images, %d nuclei, %d ST cells",
        len(images),
        len(polygons),
        len(side.st_ids),
    )
    return PairedBundle(
        root=out,
        slide=slide,
        xenium_dir=side.xenium_dir,
        alignment_csv=side.alignment_csv,
        truth=truth,
        panel=BREAST_PANEL,
        classes=taxonomy.classes,
        mpp=mpp,
        alignment=side.alignment,
        pixel_size=pixel_size,
        n_nuclei=len(polygons),
        n_cells=len(side.st_ids),
        meta={"seed": seed, "noise": noise, "misregistration": noisy.misregistration},
        placements=out / PLACEMENTS_NAME,
    )

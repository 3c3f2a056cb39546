"""A fully synthetic paired bundle: H&E slide + Xenium output of the same section + truth.

Used by the demo and by tests of every stage. Deterministic for a given seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np

from wsi_stnuc.classes import ClassTable, Taxonomy, load_taxonomy
from wsi_stnuc.export.geoparquet import write_geoparquet
from wsi_stnuc.formats import LabelCols, Xenium
from wsi_stnuc.slide.write import write_pyramidal_tiff
from wsi_stnuc.synth.expression import panel_genes, sample_counts, write_panel_yaml
from wsi_stnuc.synth.fields import make_layout
from wsi_stnuc.synth.noise import NoisyST, STNoise
from wsi_stnuc.synth.nuclei import TYPE_NAMES, sample_nuclei, visible_polygons
from wsi_stnuc.synth.painter import paint_he
from wsi_stnuc.synth.st_side import (
    ALIGNMENT_PREFIX,
    XENIUM_DIR,
    default_alignment,
    expand_cells,
    slide_to_microns,
    write_st_side,
)
from wsi_stnuc.synth.style import PaintStyle

__all__ = [
    "ALIGNMENT_PREFIX",
    "XENIUM_DIR",
    "SyntheticBundle",
    "default_alignment",
    "expand_cells",
    "make_synthetic_bundle",
    "slide_to_microns",
    "st_status",
    "write_truth",
]

log = logging.getLogger(__name__)

SLIDE_NAME = "slide.tif"
TRUTH_NAME = "truth.parquet"
PANEL_NAME = "panel.yaml"
# Truth columns beyond the LabelSet ones.
TRUTH_ST_CELL_ID = "st_cell_id"  # Xenium cell the nucleus ended up in ("" when missed)
TRUTH_ST_STATUS = "st_status"  # "ok", "missed" or "merged"
TRUTH_SOURCE = "source"  # paired bundles: source image of the nucleus


@dataclass
class SyntheticBundle:
    """Paths and metadata of a generated bundle."""

    root: Path
    slide: Path
    xenium_dir: Path
    alignment_csv: Path
    truth: Path
    panel: Path
    classes: ClassTable
    mpp: float
    alignment: np.ndarray  # 3x3, H&E level-0 px -> morphology px (what the CSV holds)
    pixel_size: float
    n_nuclei: int
    n_cells: int
    meta: dict = field(default_factory=dict)


def st_status(assignment: np.ndarray) -> np.ndarray:
    """Per true nucleus: ``missed`` (no ST cell), ``merged`` (shares one) or ``ok``."""
    shared = np.bincount(assignment[assignment >= 0], minlength=1)
    status = np.where(assignment < 0, "missed", "ok").astype(object)
    multi = (assignment >= 0) & (shared[np.maximum(assignment, 0)] > 1)
    status[multi] = "merged"
    return status


def write_truth(
    path: Path,
    polygons: np.ndarray,
    cell_ids: np.ndarray,
    cell_types: np.ndarray,
    taxonomy: Taxonomy,
    noisy: NoisyST,
    st_ids: np.ndarray,
    extra: dict | None = None,
    image_classes: np.ndarray | None = None,
) -> Path:
    """Truth GeoParquet (level-0 px) with the class table in the ``wsi_stnuc`` metadata key.

    Columns: the LabelSet ones (``cell_id``, ``geometry``, ``cell_type``, ``image_class``) plus
    ``st_cell_id`` (the Xenium cell the nucleus ended up in, ``""`` when missed), ``st_status``
    (``ok`` / ``missed`` / ``merged``) and ``extra`` columns. ``image_class`` follows the
    taxonomy from ``cell_types`` unless ``image_classes`` is given.
    """
    st_cell = np.where(noisy.assignment >= 0, st_ids[np.maximum(noisy.assignment, 0)], "")
    gdf = gpd.GeoDataFrame(
        {
            LabelCols.CELL_ID: cell_ids,
            LabelCols.CELL_TYPE: cell_types,
            LabelCols.IMAGE_CLASS: (
                taxonomy.map_types(cell_types) if image_classes is None else image_classes
            ),
            TRUTH_ST_CELL_ID: st_cell,
            TRUTH_ST_STATUS: st_status(noisy.assignment),
            **(extra or {}),
        },
        geometry=gpd.GeoSeries(polygons),
    )
    meta = {"classes": taxonomy.classes.to_dict(), "kind": "synthetic truth", "units": "level-0 px"}
    return write_geoparquet(gdf, path, metadata=meta)


def make_synthetic_bundle(
    out_dir: str | Path,
    *,
    seed: int = 0,
    width: int = 2048,
    height: int = 2048,
    mpp: float = 0.5,
    noise: STNoise | None = None,
    pixel_size: float = Xenium.DEFAULT_PIXEL_SIZE_UM,
    density: float = 1.0,
    low_count_fraction: float = 0.08,
    taxonomy: Taxonomy | None = None,
    jpeg_quality: int = 85,
    transcripts: bool = False,
    style: PaintStyle | None = None,
) -> SyntheticBundle:
    """Generate a slide, its Xenium bundle and the truth under ``out_dir``; return the paths.

    Five fine types with three visible identities: ``T``/``B`` (small round dark, ~7 µm),
    ``Malignant`` (large pale vesicular with a nucleolus, ~12 µm, in nests), ``Fibroblast``/
    ``Endothelial`` (oriented spindles, ~14 x 5 µm, in stroma). ``noise`` defaults to
    :meth:`STNoise.mild` (2 µm misregistration, 5 % missed, 2 % merged, 5 % spillover);
    ``STNoise()`` makes the ST nuclei equal the truth. ``low_count_fraction`` of cells get ~8x
    fewer transcripts. ``transcripts`` also writes ``transcripts.parquet``. Files: ``slide.tif``
    (JPEG pyramidal TIFF, mpp in the resolution tags), ``xenium/`` (with
    ``synthetic_he_imagealignment.csv``), ``truth.parquet``, ``panel.yaml``. ``style``
    (:class:`~wsi_stnuc.synth.style.PaintStyle`, default ``clean()``) sets how hard the image
    is; with overlapping nuclei the truth and ST outlines are the visible parts.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    noise = STNoise.mild() if noise is None else noise
    taxonomy = taxonomy or load_taxonomy()
    rng = np.random.default_rng(seed)
    shape = (int(height), int(width))

    layout = make_layout(rng, shape, mpp)
    style = style or PaintStyle.clean()
    nuclei = sample_nuclei(layout, rng, mpp, density=density, gap_um=style.gap_um,
                           max_overlap=style.max_overlap)  # fmt: skip
    rgb, _ = paint_he(layout, nuclei, rng, mpp, style=style)
    slide = write_pyramidal_tiff(
        out / SLIDE_NAME, rgb, mpp, quality=jpeg_quality, description="wsi-stnuc synthetic H&E"
    )
    del rgb

    polygons = visible_polygons(nuclei)
    types = np.asarray(TYPE_NAMES, dtype=object)[nuclei.kind]
    genes = panel_genes()
    counts, controls = sample_counts(
        rng, nuclei.kind, list(TYPE_NAMES), genes, low_count_fraction=low_count_fraction
    )
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
        id_start=0x1000,
        run_name=f"wsi-stnuc synthetic seed {seed}",
        transcripts=transcripts,
    )
    noisy, st_ids = side.noisy, side.st_ids
    truth = write_truth(
        out / TRUTH_NAME, polygons, side.truth_ids, types, taxonomy, noisy, side.st_ids
    )
    panel = write_panel_yaml(out / PANEL_NAME)
    log.info("synthetic bundle: %d nuclei, %d ST cells in %s", len(nuclei), len(st_ids), out)
    return SyntheticBundle(
        root=out,
        slide=slide,
        xenium_dir=side.xenium_dir,
        alignment_csv=side.alignment_csv,
        truth=truth,
        panel=panel,
        classes=taxonomy.classes,
        mpp=mpp,
        alignment=side.alignment,
        pixel_size=pixel_size,
        n_nuclei=len(nuclei),
        n_cells=len(st_ids),
        meta={"seed": seed, "noise": noise, "misregistration": noisy.misregistration,
              "style": style},  # fmt: skip
    )

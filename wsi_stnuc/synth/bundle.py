"""A fully synthetic paired bundle: H&E slide + Xenium output of the same section + truth.

Used by the demo and by tests of every stage. Deterministic for a given seed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import shapely

from wsi_stnuc.classes import ClassTable, Taxonomy, load_taxonomy
from wsi_stnuc.formats import LabelCols, Xenium
from wsi_stnuc.io_utils import atomic_path
from wsi_stnuc.slide.write import write_pyramidal_tiff
from wsi_stnuc.synth.expression import panel_genes, sample_counts, write_panel_yaml
from wsi_stnuc.synth.fields import make_layout
from wsi_stnuc.synth.noise import NoisyST, STNoise, apply_affine, apply_st_noise, spill_counts
from wsi_stnuc.synth.nuclei import TYPE_NAMES, sample_nuclei
from wsi_stnuc.synth.painter import paint_he
from wsi_stnuc.synth.xenium_writer import write_xenium_bundle, xenium_cell_ids

log = logging.getLogger(__name__)

SLIDE_NAME = "slide.tif"
XENIUM_DIR = "xenium"
TRUTH_NAME = "truth.parquet"
PANEL_NAME = "panel.yaml"
ALIGNMENT_PREFIX = "synthetic_"
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


def default_alignment(mpp: float, pixel_size: float, shape: tuple[int, int]) -> np.ndarray:
    """A non-trivial H&E px -> morphology px affine: 7° rotation, 1 % extra scale, offset.

    Asymmetric on purpose, so a reader that inverts the direction lands far off.
    """
    s = mpp / pixel_size * 1.01
    a = np.deg2rad(7.0)
    h, w = shape
    return np.array(
        [
            [s * np.cos(a), -s * np.sin(a), 900.0 + 0.05 * w * s],
            [s * np.sin(a), s * np.cos(a), 350.0 + 0.02 * h * s],
            [0.0, 0.0, 1.0],
        ]
    )


def slide_to_microns(geoms: np.ndarray, alignment: np.ndarray, pixel_size: float) -> np.ndarray:
    """Level-0 px -> morphology px (``alignment``) -> µm (``* pixel_size``)."""
    return apply_affine(geoms, np.diag([pixel_size, pixel_size, 1.0]) @ alignment)


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
) -> Path:
    """Truth GeoParquet (level-0 px) with the class table in the ``wsi_stnuc`` metadata key."""
    st_cell = np.where(noisy.assignment >= 0, st_ids[np.maximum(noisy.assignment, 0)], "")
    gdf = gpd.GeoDataFrame(
        {
            LabelCols.CELL_ID: cell_ids,
            LabelCols.CELL_TYPE: cell_types,
            LabelCols.IMAGE_CLASS: taxonomy.map_types(cell_types),
            TRUTH_ST_CELL_ID: st_cell,
            TRUTH_ST_STATUS: st_status(noisy.assignment),
            **(extra or {}),
        },
        geometry=gpd.GeoSeries(polygons),
    )
    with atomic_path(path) as tmp:
        gdf.to_parquet(tmp)
        _add_parquet_metadata(
            tmp, {"wsi_stnuc": json.dumps({"classes": taxonomy.classes.to_dict()})}
        )
    return path


def _add_parquet_metadata(path: Path, meta: dict[str, str]) -> None:
    table = pq.read_table(path)
    merged = {**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in meta.items()}}
    pq.write_table(table.replace_schema_metadata(merged), path)


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
) -> SyntheticBundle:
    """Generate a slide, its Xenium bundle and the truth, under ``out_dir``.

    ``noise`` defaults to :meth:`STNoise.mild` (2 µm misregistration, 5 % missed, 2 % merged
    nuclei); pass ``STNoise()`` for ST nuclei identical to the truth.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    noise = STNoise.mild() if noise is None else noise
    taxonomy = taxonomy or load_taxonomy()
    rng = np.random.default_rng(seed)
    shape = (int(height), int(width))

    layout = make_layout(rng, shape, mpp)
    nuclei = sample_nuclei(layout, rng, mpp, density=density)
    rgb, _ = paint_he(layout, nuclei, rng, mpp)
    slide = write_pyramidal_tiff(
        out / SLIDE_NAME, rgb, mpp, quality=jpeg_quality, description="wsi-stnuc synthetic H&E"
    )
    del rgb

    polygons = nuclei.polygons()
    types = np.asarray(TYPE_NAMES, dtype=object)[nuclei.kind]
    genes = panel_genes()
    counts, controls = sample_counts(
        rng, nuclei.kind, list(TYPE_NAMES), genes, low_count_fraction=low_count_fraction
    )
    counts = spill_counts(counts, polygons, mpp, noise.spillover, noise.spillover_distance_um, rng)
    noisy = apply_st_noise(polygons, mpp, noise, rng, image_shape=shape)
    # Merged ST cells carry the transcripts of both nuclei.
    st_counts = np.zeros((len(noisy.primary), len(genes)), dtype=np.int32)
    st_ctrl = np.zeros((len(noisy.primary), controls.shape[1]), dtype=np.int32)
    hit = noisy.assignment >= 0
    np.add.at(st_counts, noisy.assignment[hit], counts[hit])
    np.add.at(st_ctrl, noisy.assignment[hit], controls[hit])

    truth_ids = xenium_cell_ids(len(nuclei), start=0x1000)
    st_ids = truth_ids[noisy.primary]
    alignment = default_alignment(mpp, pixel_size, shape)
    nuclei_um = slide_to_microns(noisy.polygons, alignment, pixel_size)
    # Xenium cells: the nucleus expanded by up to 3 µm, limited by its neighbours (Voronoi).
    cells_um = expand_cells(nuclei_um, 3.0)
    xenium_dir = write_xenium_bundle(
        out / XENIUM_DIR,
        cell_ids=st_ids,
        nuclei_um=nuclei_um,
        counts=st_counts,
        genes=genes,
        pixel_size=pixel_size,
        cell_polygons_um=cells_um,
        control_counts=st_ctrl,
        alignment=alignment,
        alignment_prefix=ALIGNMENT_PREFIX,
        run_name=f"wsi-stnuc synthetic seed {seed}",
    )
    truth = write_truth(out / TRUTH_NAME, polygons, truth_ids, types, taxonomy, noisy, st_ids)
    panel = write_panel_yaml(out / PANEL_NAME)
    log.info("synthetic bundle: %d nuclei, %d ST cells in %s", len(nuclei), len(st_ids), out)
    return SyntheticBundle(
        root=out,
        slide=slide,
        xenium_dir=xenium_dir,
        alignment_csv=xenium_dir / f"{ALIGNMENT_PREFIX}{Xenium.HE_ALIGNMENT_SUFFIX}",
        truth=truth,
        panel=panel,
        classes=taxonomy.classes,
        mpp=mpp,
        alignment=alignment,
        pixel_size=pixel_size,
        n_nuclei=len(nuclei),
        n_cells=len(st_ids),
        meta={"seed": seed, "noise": noise, "misregistration": noisy.misregistration},
    )


def expand_cells(nuclei_um: np.ndarray, distance_um: float) -> np.ndarray:
    """Cell outlines as Xenium draws them: nucleus expansion clipped to the Voronoi region.

    Works in any length unit (``distance_um`` in the unit of ``nuclei_um``).
    """
    if len(nuclei_um) < 2:
        return shapely.buffer(nuclei_um, distance_um)
    centroids = shapely.centroid(nuclei_um)
    regions = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(centroids)))
    # voronoi_polygons does not keep input order: match each region to its centroid.
    tree = shapely.STRtree(regions)
    pt_idx, reg_idx = tree.query(centroids, predicate="intersects")
    _, first = np.unique(pt_idx, return_index=True)
    region_of = np.empty(len(nuclei_um), dtype=object)
    region_of[pt_idx[first]] = regions[reg_idx[first]]
    cells = shapely.intersection(shapely.buffer(nuclei_um, distance_um), region_of)
    # A nucleus reaching across its Voronoi edge must stay inside its own cell.
    return shapely.union(cells, nuclei_um)

"""The ST side of a paired bundle: from true nuclei and their counts to a Xenium directory.

Shared by the synthetic and the semi-synthetic (real annotated images) generators: transcript
spillover, segmentation noise (:mod:`wsi_stnuc.synth.noise`), Xenium-style cell ids and cell
outlines, the known H&E -> morphology alignment, and the files themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

from wsi_stnuc.formats import Xenium
from wsi_stnuc.synth.noise import NoisyST, STNoise, apply_affine, apply_st_noise, spill_counts
from wsi_stnuc.synth.transcripts import sample_transcripts
from wsi_stnuc.synth.xenium_writer import (
    control_probe_names,
    write_xenium_bundle,
    xenium_cell_ids,
)

XENIUM_DIR = "xenium"
ALIGNMENT_PREFIX = "synthetic_"
CELL_EXPANSION_UM = 3.0  # Xenium's default nucleus expansion is 5 µm; 3 µm keeps cells tight


@dataclass
class STSide:
    """What :func:`write_st_side` produced.

    ``truth_ids[t]`` is the id of true nucleus ``t`` (equal to its ST cell id when it was
    segmented alone); ``st_ids`` the ids of the ST cells, in ``noisy.primary`` order.
    """

    xenium_dir: Path
    alignment_csv: Path
    alignment: np.ndarray
    noisy: NoisyST
    truth_ids: np.ndarray
    st_ids: np.ndarray


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


def write_st_side(
    out_dir: str | Path,
    polygons: np.ndarray,
    counts: np.ndarray,
    controls: np.ndarray,
    genes: list[str],
    *,
    mpp: float,
    shape: tuple[int, int],
    noise: STNoise,
    rng: np.random.Generator,
    pixel_size: float = Xenium.DEFAULT_PIXEL_SIZE_UM,
    id_start: int = 0x1000,
    run_name: str = "wsi-stnuc synthetic run",
    panel_name: str = "wsi-stnuc synthetic panel",
    transcripts: bool = False,
) -> STSide:
    """Write the Xenium directory for true nuclei ``polygons`` (level-0 px) and their counts.

    Counts leak between neighbours (``noise.spillover``), nuclei are missed, merged (their
    counts summed) and misregistered by ``noise``; geometry goes level-0 px -> morphology px
    (:func:`default_alignment`) -> µm. ``transcripts`` also writes ``transcripts.parquet``.
    """
    counts = spill_counts(counts, polygons, mpp, noise.spillover, noise.spillover_distance_um, rng)
    noisy = apply_st_noise(polygons, mpp, noise, rng, image_shape=shape)
    n_st = len(noisy.primary)
    # Merged ST cells carry the transcripts of all their nuclei.
    st_counts = np.zeros((n_st, counts.shape[1]), dtype=np.int32)
    st_ctrl = np.zeros((n_st, controls.shape[1]), dtype=np.int32)
    hit = noisy.assignment >= 0
    np.add.at(st_counts, noisy.assignment[hit], counts[hit])
    np.add.at(st_ctrl, noisy.assignment[hit], controls[hit])

    truth_ids = xenium_cell_ids(len(polygons), start=id_start)
    st_ids = truth_ids[noisy.primary]
    alignment = default_alignment(mpp, pixel_size, shape)
    nuclei_um = slide_to_microns(noisy.polygons, alignment, pixel_size)
    cells_um = expand_cells(nuclei_um, CELL_EXPANSION_UM)
    tx = None
    if transcripts:
        control_names = control_probe_names(st_ctrl.shape[1])
        tx = sample_transcripts(
            st_ids,
            np.concatenate([st_counts, st_ctrl], axis=1),
            list(genes) + control_names,
            cells_um,
            nuclei_um,
            rng,
        )
    xenium_dir = write_xenium_bundle(
        Path(out_dir) / XENIUM_DIR,
        cell_ids=st_ids,
        nuclei_um=nuclei_um,
        counts=st_counts,
        genes=genes,
        pixel_size=pixel_size,
        cell_polygons_um=cells_um,
        control_counts=st_ctrl,
        transcripts=tx,
        alignment=alignment,
        alignment_prefix=ALIGNMENT_PREFIX,
        run_name=run_name,
        panel_name=panel_name,
    )
    return STSide(
        xenium_dir=xenium_dir,
        alignment_csv=xenium_dir / f"{ALIGNMENT_PREFIX}{Xenium.HE_ALIGNMENT_SUFFIX}",
        alignment=alignment,
        noisy=noisy,
        truth_ids=truth_ids,
        st_ids=st_ids,
    )

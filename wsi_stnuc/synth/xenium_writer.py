"""Write a directory in the 10x Xenium output format from cells, nucleus polygons and counts.

The files follow what Xenium Onboard Analysis writes (see docs/DESIGN.md, "Conventions"):
``cells.parquet``, vertex tables for nucleus (and cell) boundaries, the 10x HDF5 feature
matrix (CSC, barcodes as columns), ``experiment.xenium`` and, optionally, the H&E alignment CSV
and ``transcripts.parquet``. All geometry is in µm of the morphology frame.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from wsi_stnuc.formats import Xenium
from wsi_stnuc.io_utils import atomic_path

log = logging.getLogger(__name__)

NEGATIVE_CONTROL_PROBE = "Negative Control Probe"
_ID_ALPHABET = np.frombuffer(b"abcdefghijklmnop", dtype=np.uint8)


def xenium_cell_ids(n: int, start: int = 0, dataset_suffix: int = 1) -> np.ndarray:
    """Xenium-style cell ids (``'aaaabbbb-1'``): 8 hex digits of a counter spelled with a-p."""
    idx = np.arange(start, start + n, dtype=np.uint64)
    shifts = np.arange(28, -4, -4, dtype=np.uint64)
    digits = ((idx[:, None] >> shifts[None, :]) & np.uint64(15)).astype(np.intp)
    letters = _ID_ALPHABET[digits].tobytes()
    stems = np.frombuffer(letters, dtype="S8").astype(str)
    return np.char.add(stems, f"-{dataset_suffix}")


def control_probe_names(n: int) -> list[str]:
    """Names of ``n`` negative control probes, spelled as in Xenium panels."""
    return [f"NegControlProbe_{i:05d}" for i in range(n)]


def _nucleus_parts(nuclei_um: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Explode (Multi)Polygons into polygon parts; return parts and the owning row of each."""
    geoms = np.asarray(nuclei_um, dtype=object)
    parts, owner = shapely.get_parts(geoms, return_index=True)
    return parts, owner


def _vertex_table(
    polygons: np.ndarray, owner: np.ndarray, cell_ids: np.ndarray, label_ids: np.ndarray
) -> pa.Table:
    """One row per exterior vertex, first vertex repeated last, rows contiguous per polygon."""
    rings = shapely.get_exterior_ring(polygons)
    coords, ring_idx = shapely.get_coordinates(rings, return_index=True)
    return pa.table(
        {
            Xenium.CELL_ID: pa.array(cell_ids[owner[ring_idx]], type=pa.string()),
            Xenium.VERTEX_X: pa.array(coords[:, 0].astype(np.float32)),
            Xenium.VERTEX_Y: pa.array(coords[:, 1].astype(np.float32)),
            Xenium.LABEL_ID: pa.array(label_ids[ring_idx].astype(np.int32)),
        }
    )


def _write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def _write_matrix_h5(
    path: Path,
    cell_ids: np.ndarray,
    counts: np.ndarray,
    feature_names: Sequence[str],
    feature_ids: Sequence[str],
    feature_types: Sequence[str],
) -> None:
    """10x HDF5: ``matrix`` holds features x barcodes as CSC (one column per cell)."""
    n_cells, n_features = counts.shape
    csr = np.asarray(counts)
    nz_rows, nz_cols = np.nonzero(csr)  # row-major order == CSC of the transposed matrix
    data = csr[nz_rows, nz_cols].astype(np.int32)
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(np.bincount(nz_rows, minlength=n_cells), out=indptr[1:])
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["version"] = np.int32(2)
        f.attrs["library_ids"] = "custom"
        f.attrs["chemistry_description"] = "Xenium (wsi-stnuc synthetic)"
        f.attrs["original_gem_groups"] = np.array([1], dtype=np.int32)
        m = f.create_group(Xenium.H5_MATRIX)
        m.create_dataset(Xenium.H5_BARCODES, data=np.asarray(cell_ids, dtype="S"))
        m.create_dataset(Xenium.H5_DATA, data=data, compression="gzip")
        m.create_dataset(Xenium.H5_INDICES, data=nz_cols.astype(np.int64), compression="gzip")
        m.create_dataset(Xenium.H5_INDPTR, data=indptr)
        m.create_dataset(Xenium.H5_SHAPE, data=np.array([n_features, n_cells], dtype=np.int32))
        feats = m.create_group(Xenium.H5_FEATURES)
        feats.create_dataset(Xenium.H5_FEATURE_ID, data=np.asarray(feature_ids, dtype="S"))
        feats.create_dataset(Xenium.H5_FEATURE_NAME, data=np.asarray(feature_names, dtype="S"))
        feats.create_dataset(Xenium.H5_FEATURE_TYPE, data=np.asarray(feature_types, dtype="S"))
        feats.create_dataset(Xenium.H5_GENOME, data=np.full(n_features, b"unknown", dtype="S7"))
        feats.create_dataset("_all_tag_keys", data=np.array([b"genome"]))


def write_alignment_csv(path: str | Path, matrix: np.ndarray) -> Path:
    """Write a 3x3 H&E px -> morphology px affine as 10x does: comma-separated, no header."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (3, 3):
        raise ValueError(f"{path}: alignment must be 3x3, got {matrix.shape}")
    path = Path(path)
    with atomic_path(path) as tmp:
        np.savetxt(tmp, matrix, delimiter=",", fmt="%.12g")
    return path


def write_xenium_bundle(
    out_dir: str | Path,
    *,
    cell_ids: Sequence[str],
    nuclei_um: Sequence,
    counts: np.ndarray,
    genes: Sequence[str],
    pixel_size: float = Xenium.DEFAULT_PIXEL_SIZE_UM,
    cell_polygons_um: Sequence | None = None,
    control_counts: np.ndarray | None = None,
    control_names: Sequence[str] | None = None,
    transcripts: pd.DataFrame | None = None,
    panel_name: str = "wsi-stnuc synthetic panel",
    run_name: str = "wsi-stnuc synthetic run",
    alignment: np.ndarray | None = None,
    alignment_prefix: str = "synthetic_",
) -> Path:
    """Write a Xenium-format output directory; return its path.

    ``nuclei_um`` holds one Polygon or MultiPolygon per cell (µm, morphology frame); each
    polygon part becomes one nucleus with its own ``label_id``. ``counts`` is cells x genes
    (integers); ``control_counts`` cells x controls becomes "Negative Control Probe" features.
    Centroids and areas in ``cells.parquet`` come from the cell polygons when given, else from
    the nuclei. ``alignment`` (3x3, H&E px -> morphology px) is written as
    ``<alignment_prefix>he_imagealignment.csv``.
    """
    out = Path(out_dir)
    cell_ids = np.asarray(cell_ids, dtype=str)
    n = len(cell_ids)
    counts = np.asarray(counts)
    nuclei = np.asarray(nuclei_um, dtype=object)
    if len(np.unique(cell_ids)) != n:
        raise ValueError(f"{out}: cell_ids are not unique")
    if nuclei.shape != (n,) or counts.shape != (n, len(genes)):
        raise ValueError(
            f"{out}: {n} cell ids, {nuclei.shape} nuclei, counts {counts.shape}, {len(genes)} genes"
        )
    if not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any():
        raise ValueError(f"{out}: counts must be non-negative integers")
    if control_counts is None:
        control_counts = np.zeros((n, 0), dtype=np.int64)
    control_counts = np.asarray(control_counts)
    if control_names is None:
        control_names = control_probe_names(control_counts.shape[1])
    if control_counts.shape != (n, len(control_names)):
        raise ValueError(
            f"{out}: control_counts {control_counts.shape} vs {len(control_names)} names"
        )
    out.mkdir(parents=True, exist_ok=True)

    parts, owner = _nucleus_parts(nuclei)
    label_ids = np.arange(1, len(parts) + 1)
    _write_parquet(
        _vertex_table(parts, owner, cell_ids, label_ids), out / Xenium.NUCLEUS_BOUNDARIES
    )
    nucleus_area = np.bincount(owner, weights=shapely.area(parts), minlength=n)
    frame = nuclei
    if cell_polygons_um is not None:
        cells = np.asarray(cell_polygons_um, dtype=object)
        if cells.shape != (n,):
            raise ValueError(f"{out}: {len(cells)} cell polygons for {n} cells")
        cparts, cowner = shapely.get_parts(cells, return_index=True)
        cell_table = _vertex_table(cparts, cowner, cell_ids, np.arange(1, len(cparts) + 1))
        _write_parquet(cell_table, out / Xenium.CELL_BOUNDARIES)
        frame = cells
    centroids = shapely.get_coordinates(shapely.centroid(frame))
    tx = counts.sum(axis=1).astype(np.int32)
    ctrl = control_counts.sum(axis=1).astype(np.int32)
    cells_table = pa.table(
        {
            Xenium.CELL_ID: pa.array(cell_ids, type=pa.string()),
            Xenium.X_CENTROID: centroids[:, 0],
            Xenium.Y_CENTROID: centroids[:, 1],
            Xenium.TRANSCRIPT_COUNTS: tx,
            Xenium.CONTROL_PROBE_COUNTS: ctrl,
            Xenium.CONTROL_CODEWORD_COUNTS: np.zeros(n, dtype=np.int32),
            Xenium.TOTAL_COUNTS: tx + ctrl,
            Xenium.CELL_AREA: shapely.area(frame),
            Xenium.NUCLEUS_AREA: nucleus_area,
        }
    )
    _write_parquet(cells_table, out / Xenium.CELLS_PARQUET)

    genes = [str(g) for g in genes]
    names = genes + list(control_names)
    types = [Xenium.GENE_EXPRESSION] * len(genes) + [NEGATIVE_CONTROL_PROBE] * len(control_names)
    matrix = np.concatenate([counts, control_counts], axis=1)
    _write_matrix_h5(out / Xenium.MATRIX_H5, cell_ids, matrix, names, names, types)

    if transcripts is not None:
        _write_parquet(
            pa.Table.from_pandas(transcripts, preserve_index=False), out / Xenium.TRANSCRIPTS
        )
    if alignment is not None:
        write_alignment_csv(out / f"{alignment_prefix}{Xenium.HE_ALIGNMENT_SUFFIX}", alignment)

    experiment = {
        "run_name": run_name,
        "region_name": "synthetic region",
        "preservation_method": "ffpe",
        "num_cells": int(n),
        "transcripts_per_cell": float(np.median(tx)) if n else 0.0,
        "panel_name": panel_name,
        "panel_organism": "Human",
        "panel_num_targets_predesigned": len(genes),
        "panel_num_targets_custom": 0,
        Xenium.PIXEL_SIZE: float(pixel_size),
        "instrument_sw_version": "wsi-stnuc synthetic",
        "analysis_sw_version": "xenium-2.0.0 (wsi-stnuc synthetic writer)",
    }
    with atomic_path(out / Xenium.EXPERIMENT) as tmp:
        tmp.write_text(json.dumps(experiment, indent=4))
    log.info("wrote Xenium bundle with %d cells, %d nuclei to %s", n, len(parts), out)
    return out

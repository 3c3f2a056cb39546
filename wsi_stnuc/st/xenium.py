"""Read a 10x Xenium output bundle (XOA 1.x - 3.x) into an :class:`STBundle`.

What is read, and from where (names in :class:`wsi_stnuc.formats.Xenium`):

* cells: ``cells.parquet`` or ``cells.csv.gz`` (centroids, areas, control counts -> ``obs``);
* outlines: ``nucleus_boundaries`` / ``cell_boundaries`` vertex tables (parquet or csv.gz), one
  polygon per contiguous run of rows of one ``cell_id`` (and ``label_id`` where present);
* counts: ``cell_feature_matrix.h5`` (10x HDF5), else the MEX folder, else ``.zarr.zip``;
  only ``Gene Expression`` features go to ``var``, every other feature type (negative control
  probes/codewords, unassigned/deprecated/blank codewords, genomic controls) is summed per cell
  into ``obs["counts_<type>"]`` for QC;
* ``experiment.xenium``: ``pixel_size`` (default 0.2125 µm with a warning when absent);
* ``transcripts.parquet`` stays on disk: :func:`read_transcripts` / :func:`transcript_qc`.

Cell ids (int in XOA 1.x, bytes or str later) are normalised to ``str`` everywhere.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import scipy.sparse as sp

from wsi_stnuc.errors import InputError
from wsi_stnuc.formats import Xenium as X
from wsi_stnuc.st.bundle import STBundle
from wsi_stnuc.st.geometry import ids_to_str, polygons_from_vertices

log = logging.getLogger(__name__)

# Feature names of non-gene features, for matrices whose feature_type column is missing.
_CONTROL_NAME = re.compile(
    r"^(NegControl|BLANK_|Blank|UnassignedCodeword|DeprecatedCodeword|Intergenic|antisense_)",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- tables
def _find(root: Path, *names: str, required: bool = True) -> Path | None:
    for name in names:
        if (root / name).exists():
            return root / name
    if required:
        raise InputError(root, f"Xenium bundle lacks {' or '.join(names)}")
    return None


def read_table(
    path: Path, columns: list[str] | None = None, *, dictionary: tuple[str, ...] = ()
) -> pa.Table:
    """A parquet or (gzipped) CSV table as pyarrow; unreadable/missing columns -> InputError.

    Parquet columns named in ``dictionary`` are read dictionary-encoded (cheap run detection).
    """
    try:
        if path.suffix == ".parquet":
            table = pq.read_table(path, read_dictionary=list(dictionary) or None)
        else:
            table = pacsv.read_csv(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(path, f"cannot read table ({exc})") from exc
    if columns:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise InputError(path, f"missing column(s) {missing}; has {table.column_names}")
    return table


def read_boundaries(path: Path) -> gpd.GeoDataFrame:
    """A Xenium boundary vertex table as a GeoDataFrame (``cell_id``, ``geometry`` in µm)."""
    table = read_table(path, [X.CELL_ID, X.VERTEX_X, X.VERTEX_Y], dictionary=(X.CELL_ID,))
    sub = None
    if X.LABEL_ID in table.column_names:
        sub = table[X.LABEL_ID].to_numpy()
    ids, polys = polygons_from_vertices(
        table[X.CELL_ID],
        table[X.VERTEX_X].to_numpy(),
        table[X.VERTEX_Y].to_numpy(),
        sub_ids=sub,
        path=path,
    )
    return gpd.GeoDataFrame({X.CELL_ID: ids}, geometry=polys, crs=None)


def read_cells_table(path: Path) -> pd.DataFrame:
    """The cells table indexed by ``cell_id`` (str)."""
    table = read_table(path, [X.CELL_ID])
    ids = ids_to_str(table[X.CELL_ID])
    df = table.drop_columns([X.CELL_ID]).to_pandas()
    df.index = pd.Index(np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object), name=None)
    if df.index.has_duplicates:
        raise InputError(path, "duplicate cell_id values")
    return df


# --------------------------------------------------------------------------- matrices
def _decode(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8").astype(object)
    return values.astype(str).astype(object)


def read_10x_h5(path: Path) -> tuple[sp.csr_matrix, np.ndarray, pd.DataFrame]:
    """10x HDF5 feature-barcode matrix -> (cells x features CSR, barcodes, features frame)."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            m = h5[X.H5_MATRIX]
            shape = tuple(int(v) for v in m[X.H5_SHAPE][:])
            # Some writers store indices/indptr/shape as float; they are whole numbers.
            mat = sp.csc_matrix(
                (
                    m[X.H5_DATA][:],
                    m[X.H5_INDICES][:].astype(np.int64),
                    m[X.H5_INDPTR][:].astype(np.int64),
                ),
                shape=shape,
            )
            barcodes = _decode(m[X.H5_BARCODES][:])
            f = m[X.H5_FEATURES]
            names = _decode(f[X.H5_FEATURE_NAME][:])
            fid = _decode(f[X.H5_FEATURE_ID][:]) if X.H5_FEATURE_ID in f else names
            if X.H5_FEATURE_TYPE in f:
                ftype = _decode(f[X.H5_FEATURE_TYPE][:])
            else:
                ftype = np.full(len(names), X.GENE_EXPRESSION, dtype=object)
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(path, f"not a readable 10x HDF5 matrix ({exc})") from exc
    features = pd.DataFrame({"gene_ids": fid, "feature_types": ftype}, index=names)
    # The h5 is features x cells (CSC over cells); we want cells x features.
    return mat.T.tocsr(), barcodes, features


def read_mex(folder: Path) -> tuple[sp.csr_matrix, np.ndarray, pd.DataFrame]:
    """10x MEX folder (``matrix.mtx.gz``, ``features.tsv.gz``, ``barcodes.tsv.gz``)."""
    from scipy.io import mmread

    mtx = _find(folder, "matrix.mtx.gz", "matrix.mtx")
    feats = _find(folder, "features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv")
    bcs = _find(folder, "barcodes.tsv.gz", "barcodes.tsv")
    try:
        opener = gzip.open if mtx.suffix == ".gz" else open
        with opener(mtx, "rb") as fh:
            mat = sp.csr_matrix(mmread(fh).T)
        fdf = pd.read_csv(feats, sep="\t", header=None, dtype=str)
        barcodes = pd.read_csv(bcs, sep="\t", header=None, dtype=str)[0].to_numpy(dtype=object)
    except (OSError, ValueError) as exc:
        raise InputError(folder, f"not a readable MEX matrix ({exc})") from exc
    names = fdf[1] if fdf.shape[1] > 1 else fdf[0]
    ftype = fdf[2] if fdf.shape[1] > 2 else pd.Series([X.GENE_EXPRESSION] * len(fdf))
    features = pd.DataFrame(
        {"gene_ids": fdf[0].to_numpy(), "feature_types": ftype.to_numpy()},
        index=names.to_numpy(dtype=object),
    )
    if mat.shape != (len(barcodes), len(features)):
        raise InputError(folder, f"matrix shape {mat.shape} != barcodes x features")
    return mat, barcodes, features


def cell_id_from_uint32(prefix: np.ndarray, suffix: np.ndarray) -> np.ndarray:
    """Xenium's string cell id from its ``(prefix, dataset suffix)`` uint32 pair.

    The prefix's 8 hex digits are written with the letters ``a``-``p`` for 0-15
    (``0x00000000`` -> ``aaaaaaaa``), followed by ``-<suffix>``: the encoding of the
    ``.zarr.zip`` Explorer files.
    """
    prefix = np.asarray(prefix, dtype=np.uint32)
    shifts = np.arange(28, -4, -4, dtype=np.uint32)
    digits = (prefix[:, None] >> shifts[None, :]) & 0xF
    letters = (digits.astype(np.uint8) + ord("a")).view("S1").reshape(len(prefix), 8)
    heads = letters.view("S8").ravel()
    tails = np.char.add(b"-", np.asarray(suffix).astype(np.int64).astype("S"))
    return _decode(np.char.add(heads, tails))


def read_zarr_zip(path: Path) -> tuple[sp.csr_matrix, np.ndarray, pd.DataFrame]:
    """``cell_feature_matrix.zarr.zip`` (Xenium Explorer): CSR under ``cell_features``."""
    import zarr

    try:
        store = zarr.storage.ZipStore(path, mode="r")
        root = zarr.open_group(store, mode="r")
        grp = root["cell_features"]
        attrs = dict(grp.attrs)
        n_cells = int(attrs["number_cells"])
        keys = list(attrs["feature_keys"])
        types = list(attrs.get("feature_types", [X.GENE_EXPRESSION] * len(keys)))
        mat = sp.csr_matrix(
            (
                grp["data"][:],
                grp["indices"][:].astype(np.int64),
                grp["indptr"][:].astype(np.int64),
            ),
            shape=(n_cells, len(keys)),
        )
        ids = root["cell_id"][:]
        store.close()
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(path, f"not a readable Xenium zarr.zip matrix ({exc})") from exc
    barcodes = cell_id_from_uint32(ids[:, 0], ids[:, 1]) if ids.ndim == 2 else _decode(ids)
    # Explorer files call gene features "gene"; align with the 10x HDF5 spelling.
    types = [X.GENE_EXPRESSION if t == "gene" else t for t in types]
    features = pd.DataFrame({"gene_ids": keys, "feature_types": types}, index=keys)
    return mat, barcodes, features


def read_matrix(root: Path) -> tuple[sp.csr_matrix, np.ndarray, pd.DataFrame, Path]:
    """The cell-feature matrix of a bundle, from the first format present (h5, MEX, zarr)."""
    if (root / X.MATRIX_H5).exists():
        return (*read_10x_h5(root / X.MATRIX_H5), root / X.MATRIX_H5)
    if (root / X.MATRIX_MEX_DIR).is_dir():
        return (*read_mex(root / X.MATRIX_MEX_DIR), root / X.MATRIX_MEX_DIR)
    if (root / X.MATRIX_ZARR_ZIP).exists():
        return (*read_zarr_zip(root / X.MATRIX_ZARR_ZIP), root / X.MATRIX_ZARR_ZIP)
    raise InputError(
        root,
        f"Xenium bundle lacks a count matrix ({X.MATRIX_H5}, {X.MATRIX_MEX_DIR}/ or "
        f"{X.MATRIX_ZARR_ZIP})",
    )


def split_genes(
    mat: sp.csr_matrix, features: pd.DataFrame
) -> tuple[sp.csr_matrix, pd.DataFrame, pd.DataFrame]:
    """Separate genes from control features; control counts summed per feature type."""
    ftype = features["feature_types"].astype(str).to_numpy()
    is_gene = (ftype == X.GENE_EXPRESSION) & ~features.index.str.match(_CONTROL_NAME)
    genes = features[is_gene].copy()
    genes.index = genes.index.astype(str)
    if genes.index.has_duplicates:
        genes.index = pd.Index(_dedupe(list(genes.index)))
    controls = {}
    for t in sorted(set(ftype[~is_gene])):
        col = "counts_" + re.sub(r"[^0-9a-z]+", "_", t.lower()).strip("_")
        controls[col] = np.asarray(mat[:, np.flatnonzero((ftype == t) & ~is_gene)].sum(axis=1))
    ctrl = pd.DataFrame({k: v.ravel() for k, v in controls.items()})
    return mat[:, np.flatnonzero(is_gene)].tocsr(), genes, ctrl


def _dedupe(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        out.append(n if k == 0 else f"{n}-{k}")
        seen[n] = k + 1
    return out


# --------------------------------------------------------------------------- metadata
def read_experiment(root: Path) -> tuple[float, dict]:
    """``pixel_size`` and the whole ``experiment.xenium`` JSON (default size when absent)."""
    path = root / X.EXPERIMENT
    if not path.exists():
        log.warning(
            "%s: no %s; assuming pixel_size %.4f µm (current instruments)",
            root,
            X.EXPERIMENT,
            X.DEFAULT_PIXEL_SIZE_UM,
        )
        return X.DEFAULT_PIXEL_SIZE_UM, {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not valid JSON ({exc})") from exc
    size = meta.get(X.PIXEL_SIZE)
    if size is None:
        log.warning("%s: no pixel_size; assuming %.4f µm", path, X.DEFAULT_PIXEL_SIZE_UM)
        return X.DEFAULT_PIXEL_SIZE_UM, meta
    try:
        size = float(size)
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"pixel_size {size!r} is not a number") from exc
    if not np.isfinite(size) or size <= 0:
        raise InputError(path, f"pixel_size must be positive, got {size}")
    return size, meta


def find_he_alignment(root: Path) -> Path | None:
    """The ``*he_imagealignment.csv`` next to (or inside) the bundle, if any."""
    hits = sorted(root.glob(f"*{X.HE_ALIGNMENT_SUFFIX}"))
    return hits[0] if hits else None


# --------------------------------------------------------------------------- bundle
def read_xenium(path: str | Path, *, cell_boundaries: bool = True) -> STBundle:
    """Read a Xenium output folder into an :class:`STBundle` (geometry in µm).

    Args:
        path: the Xenium output folder (``outs/``).
        cell_boundaries: also read ``cell_boundaries`` when present.

    Raises:
        InputError: missing files, unreadable tables, ids that do not match between the count
            matrix, the cells table and the boundary tables, or no usable polygon.
    """
    root = Path(path)
    if not root.is_dir():
        raise InputError(root, "Xenium bundle folder not found")
    pixel_size, meta = read_experiment(root)
    mat, barcodes, features, mat_path = read_matrix(root)
    genes_mat, genes, controls = split_genes(mat, features)
    if len(set(barcodes)) != len(barcodes):
        raise InputError(mat_path, "duplicate cell barcodes")

    obs = pd.DataFrame(index=pd.Index(barcodes, dtype=object))
    cells_path = _find(root, X.CELLS_PARQUET, X.CELLS_CSV, required=False)
    if cells_path is not None:
        cells_df = read_cells_table(cells_path)
        _check_same_ids(cells_df.index, obs.index, cells_path, mat_path)
        obs = cells_df.reindex(obs.index)
    else:
        log.warning("%s: no cells table; obs holds only control counts", root)
    for col in controls.columns:
        obs[col] = controls[col].to_numpy()
    adata = ad.AnnData(X=genes_mat.astype(np.float32), obs=obs, var=genes)
    adata.obs_names = adata.obs_names.astype(str)

    nuc_path = _find(root, X.NUCLEUS_BOUNDARIES, X.NUCLEUS_BOUNDARIES_CSV)
    nuclei = read_boundaries(nuc_path)
    _check_subset(nuclei[X.CELL_ID], adata.obs_names, nuc_path)
    cells = None
    cb_path = _find(root, X.CELL_BOUNDARIES, X.CELL_BOUNDARIES_CSV, required=False)
    if cell_boundaries and cb_path is not None:
        cells = read_boundaries(cb_path)
        _check_subset(cells[X.CELL_ID], adata.obs_names, cb_path)

    tx = root / X.TRANSCRIPTS
    meta = dict(meta)
    he = find_he_alignment(root)
    if he is not None:
        meta["he_alignment"] = str(he)
    bundle = STBundle(adata, nuclei, cells, pixel_size, root, meta, tx if tx.exists() else None)
    log.info("read %r", bundle)
    return bundle


def _check_same_ids(a: pd.Index, b: pd.Index, path_a: Path, path_b: Path) -> None:
    a_set, b_set = set(a), set(b)
    if a_set != b_set:
        only_a, only_b = len(a_set - b_set), len(b_set - a_set)
        example = next(iter((a_set - b_set) or (b_set - a_set)))
        raise InputError(
            path_a,
            f"cell ids do not match {path_b.name}: {only_a} only here, {only_b} only there "
            f"(e.g. {example!r})",
        )


def _check_subset(ids: pd.Series, known: pd.Index, path: Path) -> None:
    unknown = ~ids.isin(known)
    if unknown.any():
        raise InputError(
            path,
            f"{int(unknown.sum())} polygon(s) belong to cell ids absent from the count matrix "
            f"(e.g. {ids[unknown].iloc[0]!r})",
        )


# --------------------------------------------------------------------------- transcripts
def read_transcripts(
    path: str | Path,
    *,
    min_qv: float | None = 20.0,
    columns: list[str] | None = None,
    bbox_um: tuple[float, float, float, float] | None = None,
    genes_only: bool = True,
) -> pd.DataFrame:
    """Read (a filtered part of) ``transcripts.parquet`` with pyarrow predicate push-down.

    ``bbox_um`` = ``(x0, y0, x1, y1)`` in µm; ``genes_only`` drops control features by name.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "transcripts table not found")
    filters = []
    if min_qv is not None:
        filters.append((X.TX_QV, ">=", float(min_qv)))
    if bbox_um is not None:
        x0, y0, x1, y1 = bbox_um
        filters += [(X.TX_X, ">=", x0), (X.TX_X, "<", x1), (X.TX_Y, ">=", y0), (X.TX_Y, "<", y1)]
    try:
        table = pq.read_table(path, columns=columns, filters=filters or None)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(path, f"cannot read transcripts ({exc})") from exc
    if genes_only and X.TX_FEATURE in table.column_names:
        names = ids_to_str(table[X.TX_FEATURE])
        table = table.filter(pc.invert(pc.match_substring_regex(names, _CONTROL_NAME.pattern)))
    if X.CELL_ID in table.column_names:
        table = table.set_column(
            table.column_names.index(X.CELL_ID), X.CELL_ID, ids_to_str(table[X.CELL_ID])
        )
    return table.to_pandas()


def transcript_qc(path: str | Path, *, min_qv: float = 20.0) -> dict:
    """Summary of a transcript table: totals, fraction at ``qv >= min_qv``, control fraction,
    fraction assigned to a cell and overlapping a nucleus. Reads only the needed columns."""
    path = Path(path)
    cols = [X.TX_QV, X.TX_FEATURE, X.CELL_ID, X.TX_OVERLAPS_NUCLEUS]
    try:
        present = [c for c in cols if c in pq.read_schema(path).names]
        table = pq.read_table(path, columns=present)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(path, f"cannot read transcripts ({exc})") from exc
    n = table.num_rows
    out: dict = {"n_transcripts": n}
    if n == 0:
        return out
    if X.TX_QV in present:
        out[f"frac_qv_ge_{min_qv:g}"] = float(
            pc.mean(pc.greater_equal(table[X.TX_QV], min_qv)).as_py()
        )
    if X.TX_FEATURE in present:
        ctrl = pc.match_substring_regex(ids_to_str(table[X.TX_FEATURE]), _CONTROL_NAME.pattern)
        out["frac_control"] = float(pc.mean(pc.cast(ctrl, pa.float64())).as_py())
    if X.CELL_ID in present:
        ids = ids_to_str(table[X.CELL_ID])
        # Unassigned transcripts carry "UNASSIGNED" (str ids) or -1 (int ids).
        assigned = pc.invert(pc.is_in(ids, pa.array(["UNASSIGNED", "-1", ""])))
        out["frac_in_cell"] = float(pc.mean(pc.cast(assigned, pa.float64())).as_py())
    if X.TX_OVERLAPS_NUCLEUS in present:
        ov = pc.cast(table[X.TX_OVERLAPS_NUCLEUS], pa.float64())
        out["frac_overlaps_nucleus"] = float(pc.mean(ov).as_py())
    return out

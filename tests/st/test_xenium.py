"""Xenium reader on real bundles and on small hand-made variants."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely

from wsi_stnuc.errors import InputError
from wsi_stnuc.st.geometry import polygons_from_vertices
from wsi_stnuc.st.xenium import (
    cell_id_from_uint32,
    read_transcripts,
    read_xenium,
    transcript_qc,
)


def require(path):
    if not path.exists():
        pytest.skip(f"real data file missing: {path}")
    return path


def test_real_sfe_subset_bytes_ids(data_dir):
    root = require(data_dir / "xenium" / "sfe_subset")
    b = read_xenium(root)
    assert b.n_cells == 526
    assert b.adata.obs_names[0] == "jcccmpde-1"  # bytes decoded
    # 30 features of which 3 are controls: genes only in var, controls summed in obs
    assert b.adata.n_vars == 27
    assert not b.adata.var_names.str.contains("NegControl|Codeword|BLANK").any()
    assert "counts_negative_control_probe" in b.adata.obs
    assert set(b.nuclei["cell_id"]) <= set(b.adata.obs_names)
    assert b.nuclei.geometry.is_valid.mean() > 0.95
    # polygon areas agree with the table's nucleus_area (µm²)
    area = b.nuclei.set_index("cell_id").geometry.area
    ref = b.adata.obs.loc[area.index, "nucleus_area"]
    assert np.median(np.abs(area.to_numpy() - ref.to_numpy()) / ref.to_numpy()) < 0.2
    assert b.pixel_size == pytest.approx(0.2125)
    assert b.transcripts is not None
    qc = transcript_qc(b.transcripts)
    assert qc["n_transcripts"] == 5260 and 0 < qc["frac_overlaps_nucleus"] < 1
    tx = read_transcripts(b.transcripts, bbox_um=(1300, 1300, 1400, 1400))
    assert len(tx) > 0 and tx["x_location"].between(1300, 1400).all()


def test_real_seio_small_int_ids(data_dir):
    root = require(data_dir / "xenium" / "seio_small")
    b = read_xenium(root)
    assert list(b.adata.obs_names) == ["1", "2", "3", "4", "5", "6"]
    assert b.meta["pixel_size"] == 0.2125
    assert b.adata.X.sum() > 0
    assert b.cells is not None and len(b.cells) == 6


def _copy(data_dir, tmp_path):
    src = require(data_dir / "xenium" / "seio_small")
    dst = tmp_path / "bundle"
    shutil.copytree(src, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def test_missing_files_and_mismatched_ids(data_dir, tmp_path):
    root = _copy(data_dir, tmp_path)
    (root / "nucleus_boundaries.parquet").unlink()
    with pytest.raises(InputError, match="nucleus_boundaries"):
        read_xenium(root)
    root = _copy(data_dir, tmp_path / "b")
    t = pq.read_table(root / "cells.parquet")
    ids = pa.array(np.arange(100, 100 + t.num_rows, dtype=np.int32))
    pq.write_table(t.set_column(0, "cell_id", ids), root / "cells.parquet")
    with pytest.raises(InputError, match="cells.parquet.*do not match"):
        read_xenium(root)
    with pytest.raises(InputError, match="not found"):
        read_xenium(tmp_path / "nothing")


def test_boundaries_for_unknown_cell_and_empty(data_dir, tmp_path):
    root = _copy(data_dir, tmp_path)
    t = pq.read_table(root / "nucleus_boundaries.parquet")
    ids = t["cell_id"].to_numpy().copy()
    ids[ids == 1] = 999
    pq.write_table(t.set_column(0, "cell_id", pa.array(ids)), root / "nucleus_boundaries.parquet")
    with pytest.raises(InputError, match="nucleus_boundaries.parquet.*absent"):
        read_xenium(root)
    pq.write_table(t.slice(0, 0), root / "nucleus_boundaries.parquet")
    with pytest.raises(InputError, match="no vertices"):
        read_xenium(root)


def test_experiment_pixel_size_used_and_validated(data_dir, tmp_path):
    root = _copy(data_dir, tmp_path)
    meta = json.loads((root / "experiment.xenium").read_text())
    meta["pixel_size"] = 0.5
    (root / "experiment.xenium").write_text(json.dumps(meta))
    assert read_xenium(root).pixel_size == 0.5
    meta["pixel_size"] = -1
    (root / "experiment.xenium").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="experiment.xenium"):
        read_xenium(root)


def test_csv_and_mex_variants(data_dir, tmp_path):
    """Older outputs: gzipped CSV tables and a MEX matrix instead of parquet/h5."""
    import scipy.io
    import scipy.sparse as sp

    root = _copy(data_dir, tmp_path)
    ref = read_xenium(root)
    for name in ("cells", "nucleus_boundaries", "cell_boundaries"):
        pq.read_table(root / f"{name}.parquet").to_pandas().to_csv(
            root / f"{name}.csv.gz", index=False
        )
        (root / f"{name}.parquet").unlink()
    mex = root / "cell_feature_matrix"
    mex.mkdir()
    x = sp.csr_matrix(ref.adata.X)
    extra = np.ones((x.shape[0], 1))  # one control feature
    scipy.io.mmwrite(mex / "matrix.mtx", sp.hstack([x, extra]).T.tocoo())
    feats = pd.DataFrame(
        {
            0: [*ref.adata.var["gene_ids"], "NegControlProbe_1"],
            1: [*ref.adata.var_names, "NegControlProbe_1"],
            2: ["Gene Expression"] * x.shape[1] + ["Negative Control Probe"],
        }
    )
    feats.to_csv(mex / "features.tsv.gz", sep="\t", header=False, index=False)
    pd.Series(ref.adata.obs_names).to_csv(mex / "barcodes.tsv.gz", header=False, index=False)
    (root / "cell_feature_matrix.h5").unlink()
    b = read_xenium(root)
    assert list(b.adata.obs_names) == list(ref.adata.obs_names)
    assert list(b.adata.var_names) == list(ref.adata.var_names)
    np.testing.assert_allclose(b.adata.X.toarray(), ref.adata.X.toarray())
    assert (b.adata.obs["counts_negative_control_probe"] == 1).all()
    np.testing.assert_allclose(b.nuclei.area, ref.nuclei.area)


def test_vertices_vectorised_multi_nuclei_and_degenerate():
    ids = pa.array(["a"] * 4 + ["a"] * 4 + ["b"] * 3 + ["c"] * 5)
    xy = np.array(
        [[0, 0], [2, 0], [2, 2], [0, 0]]  # a, nucleus 1 (closed)
        + [[5, 5], [7, 5], [7, 7], [5, 5]]  # a, nucleus 2
        + [[0, 0], [1, 1], [0, 0]]  # b: degenerate (2 distinct vertices)
        + [[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]],  # c
        float,
    )
    label = np.array([1] * 4 + [2] * 4 + [1] * 3 + [1] * 5)
    cid, polys = polygons_from_vertices(ids, xy[:, 0], xy[:, 1], sub_ids=label)
    assert list(cid) == ["a", "a", "c"]
    np.testing.assert_allclose(shapely.area(polys), [2.0, 2.0, 16.0])


def test_zarr_cell_id_encoding():
    # 10x: prefix 0 -> "aaaaaaaa"; hex digits 0-f are written a-p.
    out = cell_id_from_uint32(np.array([0, 0x12AF]), np.array([1, 1]))
    assert list(out) == ["aaaaaaaa-1", "aaaabckp-1"]


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_zarr_zip_matrix(tmp_path):
    import zarr

    from wsi_stnuc.st.xenium import read_zarr_zip, split_genes

    path = tmp_path / "cell_feature_matrix.zarr.zip"
    store = zarr.storage.ZipStore(path, mode="w")
    root = zarr.open_group(store, mode="w", zarr_format=2)
    grp = root.create_group("cell_features")
    grp.attrs.update(
        {
            "number_cells": 3,
            "feature_keys": ["CD3E", "EPCAM", "NegControlProbe_1"],
            "feature_types": ["gene", "gene", "Negative Control Probe"],
        }
    )
    grp.create_array("data", data=np.array([1, 2, 3], np.uint32))
    grp.create_array("indices", data=np.array([0, 1, 2], np.uint32))
    grp.create_array("indptr", data=np.array([0, 1, 2, 3], np.uint32))
    root.create_array("cell_id", data=np.array([[0, 1], [1, 1], [0x12AF, 1]], np.uint32))
    store.close()
    mat, barcodes, features = read_zarr_zip(path)
    assert list(barcodes) == ["aaaaaaaa-1", "aaaaaaab-1", "aaaabckp-1"]
    genes_mat, genes, controls = split_genes(mat, features)
    assert list(genes.index) == ["CD3E", "EPCAM"]
    np.testing.assert_array_equal(genes_mat.toarray(), [[1, 0], [0, 2], [0, 0]])
    np.testing.assert_array_equal(controls["counts_negative_control_probe"], [0, 0, 3])

"""The Xenium writer produces files in 10x's exact layout, readable by our reader."""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely

from wsi_stnuc.formats import Xenium
from wsi_stnuc.synth.xenium_writer import (
    NEGATIVE_CONTROL_PROBE,
    write_alignment_csv,
    write_xenium_bundle,
    xenium_cell_ids,
)


def _bundle(tmp_path, n=5, **kw):
    rng = np.random.default_rng(1)
    ids = xenium_cell_ids(n)
    centres = rng.uniform(10, 200, (n, 2))
    nuclei = shapely.buffer(shapely.points(centres), 3.0, quad_segs=4)
    counts = rng.poisson(2.0, (n, 4)).astype(np.int32)
    counts[0] = 0  # an empty cell must still be written
    out = write_xenium_bundle(
        tmp_path / "xen",
        cell_ids=ids,
        nuclei_um=nuclei,
        counts=counts,
        genes=["G1", "G2", "G3", "G4"],
        control_counts=np.ones((n, 2), dtype=np.int32),
        **kw,
    )
    return out, ids, nuclei, counts


def test_cell_ids_look_like_xenium():
    ids = xenium_cell_ids(300, start=70000)
    assert len(set(ids)) == 300
    assert all(re.fullmatch(r"[a-p]{8}-1", i) for i in ids)
    assert xenium_cell_ids(1)[0] == "aaaaaaaa-1"
    assert xenium_cell_ids(1, start=17)[0] == "aaaaaabb-1"


def test_h5_is_10x_layout(tmp_path):
    out, ids, _, counts = _bundle(tmp_path)
    with h5py.File(out / Xenium.MATRIX_H5) as f:
        m = f["matrix"]
        assert set(m) == {"barcodes", "data", "indices", "indptr", "shape", "features"}
        assert {"id", "name", "feature_type", "genome"} <= set(m["features"])
        assert m["barcodes"].dtype.kind == "S" and m["features/name"].dtype.kind == "S"
        assert m["data"].dtype.kind == "i" and m["indptr"].dtype.kind == "i"
        n_feat, n_cells = m["shape"][:]
        assert (n_feat, n_cells) == (6, 5)  # features x barcodes
        assert [b.decode() for b in m["barcodes"][:]] == list(ids)
        types = [t.decode() for t in m["features/feature_type"][:]]
        assert types == [Xenium.GENE_EXPRESSION] * 4 + [NEGATIVE_CONTROL_PROBE] * 2
        # CSC with one column per cell: rebuild the dense matrix and compare.
        indptr, indices, data = m["indptr"][:], m["indices"][:], m["data"][:]
        assert len(indptr) == n_cells + 1
        dense = np.zeros((n_cells, n_feat), dtype=np.int64)
        for c in range(n_cells):
            dense[c, indices[indptr[c] : indptr[c + 1]]] = data[indptr[c] : indptr[c + 1]]
    np.testing.assert_array_equal(dense[:, :4], counts)
    np.testing.assert_array_equal(dense[:, 4:], 1)


def test_vertex_tables_and_cells_table(tmp_path):
    out, ids, nuclei, counts = _bundle(tmp_path)
    t = pq.read_table(out / Xenium.NUCLEUS_BOUNDARIES).to_pandas()
    assert list(t.columns) == ["cell_id", "vertex_x", "vertex_y", "label_id"]
    # rows contiguous per polygon, ring closed
    runs = t["cell_id"].ne(t["cell_id"].shift()).cumsum()
    assert runs.max() == len(ids)
    for _, g in t.groupby(runs):
        assert (g.iloc[0][["vertex_x", "vertex_y"]] == g.iloc[-1][["vertex_x", "vertex_y"]]).all()
    cells = pq.read_table(out / Xenium.CELLS_PARQUET).to_pandas()
    assert list(cells["cell_id"]) == list(ids)
    np.testing.assert_array_equal(cells["transcript_counts"], counts.sum(axis=1))
    np.testing.assert_array_equal(cells["control_probe_counts"], 2)
    cen = shapely.get_coordinates(shapely.centroid(nuclei))
    np.testing.assert_allclose(cells[["x_centroid", "y_centroid"]].to_numpy(), cen, atol=1e-6)
    np.testing.assert_allclose(cells["nucleus_area"], shapely.area(nuclei), rtol=1e-6)
    exp = json.loads((out / Xenium.EXPERIMENT).read_text())
    assert exp["pixel_size"] == pytest.approx(0.2125) and exp["num_cells"] == 5


def test_multipart_nuclei_get_own_label_ids(tmp_path):
    ids = xenium_cell_ids(2)
    a = shapely.box(0, 0, 5, 5)
    two = shapely.MultiPolygon([shapely.box(10, 0, 14, 4), shapely.box(20, 0, 24, 4)])
    out = write_xenium_bundle(
        tmp_path / "x", cell_ids=ids, nuclei_um=[a, two], counts=np.ones((2, 1), int), genes=["G"]
    )
    t = pq.read_table(out / Xenium.NUCLEUS_BOUNDARIES).to_pandas()
    assert t.groupby("label_id")["cell_id"].first().tolist() == [ids[0], ids[1], ids[1]]
    cells = pq.read_table(out / Xenium.CELLS_PARQUET).to_pandas()
    np.testing.assert_allclose(cells["nucleus_area"], [25, 32])


def test_alignment_csv_roundtrip(tmp_path):
    m = np.array([[2.1, -0.3, 100.5], [0.25, 2.2, -40.0], [0, 0, 1]])
    path = write_alignment_csv(tmp_path / "a_he_imagealignment.csv", m)
    text = path.read_text()
    assert "," in text and not text[0].isalpha()  # no header
    np.testing.assert_allclose(np.loadtxt(path, delimiter=","), m)


def test_bad_input_rejected(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        write_xenium_bundle(
            tmp_path,
            cell_ids=["a-1", "a-1"],
            nuclei_um=[shapely.box(0, 0, 1, 1)] * 2,
            counts=np.ones((2, 1), int),
            genes=["G"],
        )
    with pytest.raises(ValueError, match="integers"):
        write_xenium_bundle(
            tmp_path,
            cell_ids=["a-1"],
            nuclei_um=[shapely.box(0, 0, 1, 1)],
            counts=np.ones((1, 1)) * 0.5,
            genes=["G"],
        )


def test_reads_back_with_read_xenium(tmp_path):
    xen = pytest.importorskip("wsi_stnuc.st.xenium")
    m = np.array([[2.0, 0.1, 5.0], [-0.1, 2.0, 3.0], [0, 0, 1]])
    out, ids, nuclei, counts = _bundle(tmp_path, alignment=m, cell_polygons_um=None)
    b = xen.read_xenium(out)
    assert list(b.adata.obs_names) == list(ids)
    assert list(b.adata.var_names) == ["G1", "G2", "G3", "G4"]  # controls are not genes
    np.testing.assert_array_equal(np.asarray(b.adata.X.todense()), counts)
    got = b.nuclei.set_index("cell_id").loc[list(ids)].geometry.to_numpy()
    assert shapely.equals_exact(got, nuclei, tolerance=1e-4).all()
    assert b.pixel_size == pytest.approx(0.2125)
    assert b.meta["he_alignment"].endswith("he_imagealignment.csv")

"""Cell typing: panels, the three methods, normalisation, image classes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from wsi_stnuc.classes import UNKNOWN, load_taxonomy
from wsi_stnuc.errors import InputError
from wsi_stnuc.st.celltype import image_classes, log_normalize, type_cells
from wsi_stnuc.st.panels import Panel, load_panel, shipped_panels

TOY_PANEL = Panel(
    "toy",
    {
        "T": ["CD3E", "CD3D", "TRAC", "CD2"],
        "Malignant": ["EPCAM", "KRT8", "ERBB2", "CDH1"],
        "Fibroblast": ["LUM", "POSTN", "DCN", "COL1A1", "NOT_MEASURED"],
        "B": ["MS4A1"],  # not measured at all: dropped with a warning
    },
    {"T": ["EPCAM"]},
)


def test_shipped_panels_use_taxonomy_names():
    tax = load_taxonomy()
    assert {"human_breast", "immuno_oncology"} <= set(shipped_panels())
    for name in ("human_breast", "immuno_oncology"):
        p = load_panel(name)
        assert set(p.types) <= set(tax.mapping), set(p.types) - set(tax.mapping)
        assert all(p.types.values())


def test_bad_panel_files(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\ntypes: {T: CD3E}\n")
    with pytest.raises(InputError, match="p.yaml.*list"):
        load_panel(bad)
    bad.write_text("name: x\ntypes: {T: [CD3E]}\nnegative: {B: [CD3E]}\n")
    with pytest.raises(InputError, match="negative"):
        load_panel(bad)
    with pytest.raises(InputError, match="not found"):
        load_panel(tmp_path / "none.yaml")


def test_log_normalize():
    x = sp.csr_matrix(np.array([[1.0, 3.0], [0.0, 0.0], [10.0, 10.0]]))
    out = log_normalize(x).toarray()
    np.testing.assert_allclose(out[0], np.log1p([2500.0, 7500.0]), rtol=1e-6)
    np.testing.assert_allclose(out[1], 0.0)
    np.testing.assert_allclose(out[2], np.log1p([5000.0, 5000.0]), rtol=1e-6)


@pytest.mark.parametrize("method", ["panel", "cluster"])
def test_panel_and_cluster_recover_types(bundle, method):
    out = type_cells(bundle.adata, method, panel=TOY_PANEL, smooth_k=10)
    assert list(out.index) == list(bundle.adata.obs_names)
    assert set(out.columns) >= {"cell_type", "score", "confidence"}
    acc = (out["cell_type"].to_numpy() == bundle.adata.obs["truth"].to_numpy()).mean()
    assert acc > 0.9
    assert out["confidence"].between(0, 1).all()


def test_panel_scores_change_with_markers(bundle):
    """A cell with only T markers is T; moving its counts to fibroblast genes flips it."""
    a = bundle.adata.copy()
    out = type_cells(a, "panel", panel=TOY_PANEL, smooth_k=0)
    i = int(np.flatnonzero(a.obs["truth"] == "T")[0])
    assert out["cell_type"].iloc[i] == "T"
    x = a.X.tolil()
    genes = list(a.var_names)
    for t, f in zip(TOY_PANEL.types["T"], TOY_PANEL.types["Fibroblast"], strict=False):
        x[i, genes.index(f)] = x[i, genes.index(t)] + 5
        x[i, genes.index(t)] = 0
    a.X = x.tocsr()
    assert type_cells(a, "panel", panel=TOY_PANEL, smooth_k=0)["cell_type"].iloc[i] == "Fibroblast"


def test_transfer(bundle, reference):
    ref = reference
    out = type_cells(bundle.adata, "transfer", reference=ref)
    acc = (out["cell_type"].to_numpy() == bundle.adata.obs["truth"].to_numpy()).mean()
    assert acc > 0.9
    assert out["score"].between(0, 1).all() and out["confidence"].between(0, 1).all()
    with pytest.raises(InputError, match="reference"):
        type_cells(bundle.adata, "transfer")
    with pytest.raises(InputError, match="obs column"):
        type_cells(bundle.adata, "transfer", reference=ref, reference_key="nope")


def test_image_classes_threshold():
    tax = load_taxonomy()
    types = pd.DataFrame(
        {"cell_type": ["T", "Malignant", "Weird", "Fibroblast"], "confidence": [0.9, 0.1, 0.9, 0.5]}
    )
    assert list(image_classes(types, tax, min_confidence=0.2)) == [
        "inflammatory",
        UNKNOWN,
        UNKNOWN,
        "connective",
    ]

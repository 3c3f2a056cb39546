"""Cell typing: panels, the three methods, normalisation, image classes."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from wsi_stnuc.classes import UNKNOWN, ClassTable, Taxonomy, load_taxonomy
from wsi_stnuc.errors import InputError
from wsi_stnuc.st.celltype import (
    class_probabilities,
    image_classes,
    log_normalize,
    self_train,
    type_cells,
    type_probabilities,
)
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


def spill_data(n_per_type: int = 150, spill: float = 0.5, rho: float = 0.25, seed: int = 0):
    """T, Malignant and Fibroblast cells where half of the T cells carry transcripts spilled
    over from a fibroblast neighbour (a share ``rho`` of their counts drawn from the
    fibroblast profile). Fibroblast markers are abundant (ECM genes, 40x), T markers scarce
    (2x), so the spill puts more fibroblast-marker counts into those T cells than they have
    T-marker counts; each type also has 30 non-marker "programme" genes (4x) that the spill
    barely touches. Returns ``(AnnData with obs truth, spilled mask)``."""
    fold = {"T": 2.0, "Malignant": 20.0, "Fibroblast": 40.0}
    rng = np.random.default_rng(seed)
    program = {t: [f"{t[:3].upper()}_P{i}" for i in range(30)] for t in SPILL_MARKERS}
    genes = [g for gs in SPILL_MARKERS.values() for g in gs]
    genes += [g for gs in program.values() for g in gs] + [f"HK{i}" for i in range(10)]
    pos = {g: i for i, g in enumerate(genes)}
    prof = {}
    for t in SPILL_MARKERS:
        p = np.ones(len(genes))
        p[[pos[g] for g in SPILL_MARKERS[t]]] = fold[t]
        p[[pos[g] for g in program[t]]] = 4.0
        prof[t] = p / p.sum()
    truth = np.repeat(list(SPILL_MARKERS), n_per_type)
    rate = np.vstack([prof[t] for t in truth])
    spilled = (truth == "T") & (rng.random(len(truth)) < spill)
    rate[spilled] = (1 - rho) * prof["T"] + rho * prof["Fibroblast"]
    x = rng.poisson(rate * 80.0).astype(np.float32)
    adata = ad.AnnData(
        sp.csr_matrix(x),
        obs=pd.DataFrame({"truth": truth}, index=[f"c{i}" for i in range(len(truth))]),
        var=pd.DataFrame(index=genes),
    )
    return adata, spilled


SPILL_MARKERS = {
    "T": ["CD3E", "CD3D", "TRAC", "CD2"],
    "Malignant": ["EPCAM", "KRT8", "ERBB2", "CDH1"],
    "Fibroblast": ["LUM", "POSTN", "DCN", "COL1A1"],
}


def test_self_training_recovers_spilled_cells():
    """Per-cell marker scores call the spilled T cells fibroblasts; self-training on the seeds'
    whole profiles gets them back (the regression this guards against)."""
    adata, spilled = spill_data()
    truth = adata.obs["truth"].to_numpy()
    panel = Panel("spill", SPILL_MARKERS)
    old = type_cells(adata, "panel", panel=panel, smooth_k=0, refine=False)
    assert (old["cell_type"].to_numpy()[spilled] == "T").mean() < 0.8
    for kw in ({"smooth_k": 0}, {}):
        new = type_cells(adata, "panel", panel=panel, **kw)
        ok = new["cell_type"].to_numpy() == truth
        assert ok[spilled].mean() > 0.95 and ok.mean() > 0.95, kw
        assert new["confidence"].between(0, 1).all() and new["score"].between(0, 1).all()
    clus = type_cells(adata, "cluster", panel=panel)
    assert (clus["cell_type"].to_numpy() == truth).mean() > 0.95
    assert "cluster" in clus


def test_self_train_subsample_and_absent_type():
    """Rounds on a random subsample still type every cell; a panel type whose markers are
    never detected gets no seeds, so it is never called."""
    adata, _ = spill_data(n_per_type=100, spill=0.0)
    truth = adata.obs["truth"].to_numpy()
    adata = ad.AnnData(
        sp.hstack([adata.X, sp.csr_matrix((adata.n_obs, 1))]).tocsr(),
        obs=adata.obs,
        var=pd.DataFrame(index=[*adata.var_names, "MS4A1"]),
    )
    panel = Panel("spill", {**SPILL_MARKERS, "B": ["MS4A1"]})
    from wsi_stnuc.st.celltype import panel_scores

    scores = panel_scores(adata, panel)
    probs = self_train(adata, scores, smooth_k=0, max_cells=200)
    assert list(probs.columns) == list(scores.columns) and probs.index.equals(scores.index)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert (probs["B"] == 0).all()
    called = np.asarray(probs.columns)[probs.to_numpy().argmax(axis=1)]
    assert (called == truth).mean() > 0.95


def test_log_normalize():
    x = sp.csr_matrix(np.array([[1.0, 3.0], [0.0, 0.0], [10.0, 10.0]]))
    out = log_normalize(x).toarray()
    np.testing.assert_allclose(out[0], np.log1p([2500.0, 7500.0]), rtol=1e-6)
    np.testing.assert_allclose(out[1], 0.0)
    np.testing.assert_allclose(out[2], np.log1p([5000.0, 5000.0]), rtol=1e-6)
    med = log_normalize(x, None).toarray()  # median library size of cells with counts: 12
    np.testing.assert_allclose(med[0], np.log1p([3.0, 9.0]), rtol=1e-6)


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


def test_class_probabilities_sum_types_into_classes():
    tax = Taxonomy(
        ClassTable.from_names(["inflammatory", "spindle"]),
        {"T": "inflammatory", "B": "inflammatory", "Fibro": "spindle", "Odd": UNKNOWN},
    )
    scores = pd.DataFrame(
        {
            "T": [0.5, 0.0, 0.0],
            "B": [0.3, 0.0, 0.0],
            "Fibro": [0.1, 0.5, 0.0],
            "Odd": [0.1, 0.5, 1.0],
        }
    )
    soft = class_probabilities(scores, tax, renormalise=True)
    assert soft.shape == (3, 2)
    assert np.allclose(soft, [[8 / 9, 1 / 9], [0, 1], [0, 0]])
    raw = class_probabilities(scores, tax)
    assert np.allclose(raw, [[0.8, 0.1], [0, 0.5], [0, 0]])
    with pytest.raises(InputError):
        class_probabilities(-scores, tax)


def test_typing_methods_give_type_probabilities(bundle, reference):
    """Methods with probabilities carry them as type_prob_<type> columns (rows sum to 1, the
    called type has the largest); marker scores without self-training are no probabilities."""
    for method, kw in (("transfer", {"reference": reference}), ("panel", {"panel": TOY_PANEL}),
                       ("cluster", {"panel": TOY_PANEL})):  # fmt: skip
        out = type_cells(bundle.adata, method, **kw)
        probs = type_probabilities(out)
        assert probs is not None, method
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        best = np.asarray(probs.columns)[probs.to_numpy().argmax(axis=1)]
        assert (best == out["cell_type"].to_numpy()).all(), method
    raw = type_cells(bundle.adata, "panel", panel=TOY_PANEL, refine=False, smooth_k=0)
    assert type_probabilities(raw) is None

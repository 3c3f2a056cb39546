"""Cell typing from expression, three ways: marker panel, clustering + marker vote, label
transfer from a labelled reference. Each returns a DataFrame indexed by ``cell_id`` with
``cell_type`` (str), ``score`` (method-specific strength of the call) and ``confidence``
(0..1: how much the best type beats the second one); methods that give per-type
probabilities (``panel`` and ``cluster`` with ``refine``, ``transfer``) add one column per
type, ``type_prob_<type>`` (:data:`wsi_stnuc.formats.LabelCols.TYPE_PROB_PREFIX`), rows
summing to 1 -- the source of soft class targets.

Normalisation: counts scaled per cell and ``log1p`` (cells with no counts stay 0), then each
gene centred and divided by its standard deviation, clipped to ``[-10, 10]`` (as scanpy's
``scale(max_value=10)``), so that a marker panel weighs a rare, specific gene as much as an
abundant one. ``panel`` and ``cluster`` scale to the median library size (scanpy's
``normalize_total`` default): with CP10k one stray count in a 60-count Xenium cell becomes
``log1p(167)`` ~ 5, as large as genuine expression. Work is done in row chunks, so a million
cells never need a dense cells x genes matrix.

* ``panel``: a type's score is the mean scaled expression of its positive markers minus half
  the mean of its negative markers. Single Xenium cells of ~60-100 counts carry few marker
  counts, and transcripts spill over from neighbours (in real breast data LUM/POSTN are
  detected in ~45% of T cells), so per-cell scores are noisy. With ``refine`` (default) the
  scores only pick *seeds* -- the clearest calls of each type, on scores averaged over each
  cell's ``smooth_k`` nearest neighbours in PCA space -- and a logistic regression on all
  genes, trained on the seeds and re-trained on its own confident calls for a few rounds,
  types every cell (:func:`self_train`; Garnett/scType-style self-training). Without
  ``refine``, the (smoothed) scores are the answer; the exact neighbour search is then
  skipped, with a warning, above 50,000 cells. ``confidence`` is the margin best - second on a
  data-relative scale (see ``_margin_confidence``). Cells whose best score (the classifier's
  probability with ``refine``) is below ``min_score`` are ``unassigned``.
* ``cluster``: PCA, then Leiden on a kNN graph when ``leidenalg`` and ``igraph`` import, else
  (documented fallback) k-means with ``n_clusters`` (mini-batch beyond 50,000 cells); each
  cluster is named by the panel scores of its mean profile. With ``refine`` (default) the most
  clearly named clusters seed the same self-training, so that every cell is re-called on its
  own profile; without it, cells inherit the cluster's score and margin confidence.
* ``transfer``: shared genes only; reference and query normalised alike (scaling statistics of
  the reference); PCA fitted on the reference; the query's ``k`` nearest reference cells vote;
  ``score`` = vote share of the winner, ``confidence`` = its lead over the runner-up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from wsi_stnuc.classes import UNKNOWN, Taxonomy
from wsi_stnuc.errors import InputError
from wsi_stnuc.formats import LabelCols
from wsi_stnuc.st.panels import Panel, load_panel

log = logging.getLogger(__name__)

UNASSIGNED = "unassigned"
TARGET_SUM = 1e4
CLIP = 10.0
NEGATIVE_WEIGHT = 0.5
CHUNK = 100_000
SMOOTH_MAX_CELLS = 50_000  # above this the panel is scored per cell (see type_by_panel)
SELF_TRAIN_MAX_CELLS = 20_000  # self-training rounds run on at most this many random cells
SEED_FRACTION = 0.2  # top share (by margin) of each type's calls used as training seeds
SELF_TRAIN_ROUNDS = 5
SELF_TRAIN_C = 0.1  # L2 strength of the logistic regression (strong: seeds are noisy)
MIN_SEEDS = 10
MAX_SEEDS_PER_TYPE = 500  # random cap, so the classifier's fit stays bounded at any scale

Method = Literal["panel", "cluster", "transfer"]


# --------------------------------------------------------------------------- normalisation
def _csr(x) -> sp.csr_matrix:
    return sp.csr_matrix(x, dtype=np.float32) if not sp.isspmatrix_csr(x) else x


def log_normalize(x, target_sum: float | None = TARGET_SUM) -> sp.csr_matrix:
    """Library-size scaling + log1p of a cells x genes count matrix (sparse in, sparse out).

    ``target_sum`` 10,000 is CP10k; ``None`` scales to the median library size (scanpy's
    ``normalize_total`` default), which keeps one count in a 60-count cell near 1 instead of
    ~5 and so does not let single stray transcripts dominate sparse panels.
    """
    x = _csr(x).astype(np.float32)
    totals = np.asarray(x.sum(axis=1)).ravel()
    if target_sum is None:
        target_sum = median_total(totals)
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    out = sp.diags(scale.astype(np.float32)) @ x
    out = sp.csr_matrix(out)
    out.data = np.log1p(out.data)
    return out


def median_total(totals: np.ndarray) -> float:
    """Median library size over cells with counts (1 when none has any)."""
    pos = totals[totals > 0]
    return float(np.median(pos)) if len(pos) else 1.0


def gene_stats(xn: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and standard deviation (sparse-friendly); zero sd becomes 1."""
    mean = np.asarray(xn.mean(axis=0)).ravel()
    sq = np.asarray(xn.multiply(xn).mean(axis=0)).ravel()
    sd = np.sqrt(np.maximum(sq - mean**2, 0.0))
    sd[sd < 1e-8] = 1.0
    return mean, sd


def scaled_chunks(
    xn: sp.csr_matrix, mean: np.ndarray, sd: np.ndarray, chunk: int = CHUNK
) -> Iterator[tuple[slice, np.ndarray]]:
    """Dense z-scored, clipped row chunks ``(rows, z)``."""
    for start in range(0, xn.shape[0], chunk):
        rows = slice(start, min(start + chunk, xn.shape[0]))
        z = (xn[rows].toarray() - mean) / sd
        np.clip(z, -CLIP, CLIP, out=z)
        yield rows, z.astype(np.float32)


def _margin_confidence(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(best index, best score, confidence)`` per row.

    Score scales differ between panels and data sets, so the margin (best - second) is put on
    a relative scale: ``confidence = 1 - 2 ** (-margin / median margin)``. A cell with the
    median margin gets 0.5, a tie 0, a margin 3x the median 0.875.
    """
    best = np.argmax(scores, axis=1)
    top = scores[np.arange(len(scores)), best]
    if scores.shape[1] == 1:
        return best, top, np.ones(len(scores))
    second = np.partition(scores, -2, axis=1)[:, -2]
    margin = top - second
    ref = float(np.median(margin)) if len(margin) else 0.0
    if ref <= 0:
        ref = float(margin.mean()) if margin.mean() > 0 else 1.0
    return best, top, 1.0 - np.exp2(-margin / ref)


# --------------------------------------------------------------------------- panel
def _panel_weights(panel: Panel, genes: pd.Index) -> tuple[np.ndarray, list[str]]:
    """Genes x types matrix: +1/n_pos for markers, -w/n_neg for negative markers."""
    types = list(panel.types)
    w = np.zeros((len(genes), len(types)), np.float32)
    for j, t in enumerate(types):
        pos = genes.get_indexer(panel.types[t])
        w[pos, j] += 1.0 / len(pos)
        neg = genes.get_indexer(panel.negative.get(t, []))
        if len(neg):
            w[neg, j] -= NEGATIVE_WEIGHT / len(neg)
    return w, types


def _prepared_panel(panel: Panel | str, genes: pd.Index) -> Panel:
    p = load_panel(panel) if not isinstance(panel, Panel) else panel
    p = p.restrict(genes)
    if not p.types:
        raise InputError(None, f"marker panel {p.name!r} shares no gene with the data")
    return p


def panel_scores(
    adata: ad.AnnData,
    panel: Panel | str,
    *,
    target_sum: float | None = None,
    chunk: int = CHUNK,
) -> pd.DataFrame:
    """Cells x types panel scores (mean scaled marker expression, negatives subtracted);
    ``target_sum`` as in :func:`log_normalize` (default: median library size)."""
    # Library size over all genes, then keep the panel genes only (in _scores_from).
    return _scores_from(log_normalize(adata.X, target_sum), adata, panel, chunk)


def _scores_from(
    xn: sp.csr_matrix, adata: ad.AnnData, panel: Panel | str, chunk: int = CHUNK
) -> pd.DataFrame:
    """Panel scores from the log-normalised matrix ``xn`` of ``adata`` (all genes)."""
    genes = pd.Index(adata.var_names.astype(str))
    p = _prepared_panel(panel, genes)
    used = sorted(p.genes & set(genes))
    sub = sp.csr_matrix(xn[:, genes.get_indexer(used)])
    mean, sd = gene_stats(sub)
    w, types = _panel_weights(p, pd.Index(used))
    out = np.empty((adata.n_obs, len(types)), np.float32)
    for rows, z in scaled_chunks(sub, mean, sd, chunk):
        out[rows] = z @ w
    return pd.DataFrame(out, index=adata.obs_names.astype(str), columns=types)


def type_by_panel(
    adata: ad.AnnData,
    panel: Panel | str,
    *,
    min_score: float = 0.0,
    smooth_k: int = 30,
    refine: bool = True,
    n_comps: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """Marker-panel typing; see the module docstring. ``smooth_k > 1`` averages each cell's
    type scores over its ``smooth_k`` nearest cells in expression PCA space; ``refine``
    propagates the confident calls to all cells (:func:`self_train`)."""
    xn = log_normalize(adata.X, None)
    scores = _scores_from(xn, adata, panel)
    if refine:
        probs = _self_train(xn, scores, smooth_k=smooth_k, seed=seed)
        # self-training that found too few seeds hands back the raw scores: no probabilities
        return _from_scores(probs, min_score, with_probs=probs is not scores)
    if smooth_k > 1 and adata.n_obs > SMOOTH_MAX_CELLS:
        # An exact kNN search in 20-D costs minutes beyond ~10^5 cells (the kd-tree degrades
        # to brute force); rather than stall, type per cell and say so.
        log.warning(
            "%d cells: kNN smoothing of panel scores skipped (limit %d); typing per cell. "
            "Consider refine=True or --method transfer with a reference.",
            adata.n_obs,
            SMOOTH_MAX_CELLS,
        )
    elif smooth_k > 1 and adata.n_obs > smooth_k:
        pcs = embed(adata, n_comps, seed=seed)
        smoothed = smooth_over_neighbours(scores.to_numpy(np.float64), pcs, smooth_k)
        scores = pd.DataFrame(smoothed, index=scores.index, columns=scores.columns)
    return _from_scores(scores, min_score)


# --------------------------------------------------------------------------- self-training
def _seed_mask(
    scores: np.ndarray, fraction: float, min_seeds: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Confident cells per type: those called ``t`` (arg-max) with a positive score whose margin
    over the runner-up is in the top ``fraction`` of the cells called ``t``; types with fewer
    than ``min_seeds`` such cells get none (too few to learn from: likely absent); at most
    ``MAX_SEEDS_PER_TYPE`` per type (a random draw)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    n, n_types = scores.shape
    best = np.argmax(scores, axis=1)
    top = scores[np.arange(n), best]
    second = np.partition(scores, -2, axis=1)[:, -2] if n_types > 1 else np.zeros(n)
    margin = top - second
    seeds = np.zeros(n, bool)
    for j in range(n_types):  # a loop over types, not cells
        called = (best == j) & (top > 0)
        if called.sum() < min_seeds:
            continue
        cut = np.quantile(margin[called], 1.0 - fraction)
        pick = np.flatnonzero(called & (margin >= cut))
        if len(pick) > MAX_SEEDS_PER_TYPE:
            pick = rng.choice(pick, MAX_SEEDS_PER_TYPE, replace=False)
        if len(pick) >= min_seeds:
            seeds[pick] = True
    return seeds


def self_train(
    adata: ad.AnnData,
    scores: pd.DataFrame,
    *,
    smooth_k: int = 30,
    seed_fraction: float = SEED_FRACTION,
    rounds: int = SELF_TRAIN_ROUNDS,
    min_seeds: int = MIN_SEEDS,
    max_cells: int = SELF_TRAIN_MAX_CELLS,
    n_comps: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """Semi-supervised refinement of per-cell type scores; returns cells x types probabilities
    (the input scores, with a warning, when fewer than two types get seeds).

    Marker scores of single cells are noisy (a few marker counts, transcripts spilled over from
    neighbours), but the most clearly called cells of each type are mostly right. Those seeds
    (:func:`_seed_mask`) train a multinomial logistic regression on *all* genes (median-scaled
    ``log1p``, z-scored), which then re-calls every cell; ``rounds`` times, each round's
    confident calls becoming the next seeds (self-training; Garnett likewise trains a
    regularised multinomial classifier on marker-chosen representative cells). A cell's type
    thus rests on its whole profile, not on a few markers that spill-over can fake. ``smooth_k > 1``: seeds are chosen on scores averaged over each cell's
    nearest neighbours in PCA space.

    Scale rule: rounds run on at most ``max_cells`` random cells (the kNN search included);
    the final model is applied to all cells in row chunks, so a million cells cost one pass.
    Types that never get ``min_seeds`` seeds cannot be called (probability 0).
    """
    return _self_train(
        log_normalize(adata.X, None),
        scores,
        smooth_k=smooth_k,
        seed_fraction=seed_fraction,
        rounds=rounds,
        min_seeds=min_seeds,
        max_cells=max_cells,
        n_comps=n_comps,
        seed=seed,
    )


def _self_train(
    xn: sp.csr_matrix,
    scores: pd.DataFrame,
    *,
    smooth_k: int = 30,
    seed_fraction: float = SEED_FRACTION,
    rounds: int = SELF_TRAIN_ROUNDS,
    min_seeds: int = MIN_SEEDS,
    max_cells: int = SELF_TRAIN_MAX_CELLS,
    n_comps: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`self_train` on the median-scaled log matrix ``xn`` (all genes)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    values = scores.to_numpy(np.float64)
    n, n_types = values.shape
    mean, sd = gene_stats(xn)
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.permutation(n)[:max_cells]) if n > max_cells else np.arange(n)
    z = next(scaled_chunks(xn[sub], mean, sd, chunk=len(sub)))[1]
    current = values[sub]
    if smooth_k > 1 and len(sub) > smooth_k:
        n_pc = max(1, min(n_comps, z.shape[1] - 1, z.shape[0] - 1))
        pcs = PCA(n_components=n_pc, svd_solver="randomized", random_state=seed).fit_transform(z)
        current = smooth_over_neighbours(current, pcs, smooth_k)
    clf = None
    for _ in range(rounds):
        seeds = _seed_mask(current, seed_fraction, min_seeds, rng)
        labels = np.argmax(current[seeds], axis=1)
        if len(np.unique(labels)) < 2:
            break  # nothing to discriminate: keep what we have
        clf = LogisticRegression(C=SELF_TRAIN_C, max_iter=300).fit(z[seeds], labels)
        current = np.zeros((len(sub), n_types))
        current[:, clf.classes_] = clf.predict_proba(z)
    if clf is None:
        log.warning("self-training found fewer than 2 types with %d seeds; scores kept", min_seeds)
        return scores
    out = np.zeros((n, n_types))
    for rows, zc in scaled_chunks(xn, mean, sd):
        out[rows, clf.classes_] = clf.predict_proba(zc)
    return pd.DataFrame(out, index=scores.index, columns=scores.columns)


def _from_scores(
    scores: pd.DataFrame, min_score: float, *, with_probs: bool = False
) -> pd.DataFrame:
    """The calls from per-type scores; ``with_probs``: the scores are probabilities, kept as
    ``type_prob_<type>`` columns."""
    best, score, conf = _margin_confidence(scores.to_numpy(np.float64))
    types = np.asarray(scores.columns, dtype=object)[best]
    low = score < min_score
    types[low] = UNASSIGNED
    conf = np.where(low, 0.0, conf)
    out = pd.DataFrame({"cell_type": types, "score": score, "confidence": conf}, index=scores.index)
    return with_type_probs(out, scores) if with_probs else out


def with_type_probs(calls: pd.DataFrame, probs: pd.DataFrame) -> pd.DataFrame:
    """``calls`` with one ``type_prob_<type>`` column (float32) per column of ``probs``."""
    cols = {
        f"{LabelCols.TYPE_PROB_PREFIX}{t}": probs[t].to_numpy(np.float32) for t in probs.columns
    }
    return pd.concat([calls, pd.DataFrame(cols, index=calls.index)], axis=1)


def type_probabilities(types: pd.DataFrame) -> pd.DataFrame | None:
    """The ``type_prob_<type>`` columns of a typing result or LabelSet, renamed to the bare
    type names (``None`` when there are none)."""
    prefix = LabelCols.TYPE_PROB_PREFIX
    cols = [c for c in types.columns if isinstance(c, str) and c.startswith(prefix)]
    if not cols:
        return None
    return types[cols].rename(columns=lambda c: c[len(prefix) :])


# --------------------------------------------------------------------------- clustering
def embed(adata: ad.AnnData, n_comps: int = 20, *, seed: int = 0, max_fit: int = 50_000):
    """PCA coordinates of the scaled log-expression (fitted on at most ``max_fit`` random
    cells, applied to all in chunks, so memory stays flat for a million cells)."""
    from sklearn.decomposition import PCA

    xn = log_normalize(adata.X)
    mean, sd = gene_stats(xn)
    rng = np.random.default_rng(seed)
    fit_rows = np.sort(rng.permutation(xn.shape[0])[:max_fit])
    zfit = next(scaled_chunks(xn[fit_rows], mean, sd, chunk=max_fit))[1]
    n = max(1, min(n_comps, zfit.shape[1] - 1, zfit.shape[0] - 1))
    pca = PCA(n_components=n, svd_solver="randomized", random_state=seed).fit(zfit)
    out = np.empty((xn.shape[0], n), np.float32)
    for rows, z in scaled_chunks(xn, mean, sd):
        out[rows] = pca.transform(z)
    return out


def smooth_over_neighbours(values: np.ndarray, coords: np.ndarray, k: int) -> np.ndarray:
    """Mean of ``values`` over each cell's ``k`` nearest cells in ``coords`` (itself included).

    Pools the evidence of transcriptionally similar cells: a low-count cell borrows the marker
    counts its look-alikes have, which is what makes sparse panels usable.
    """
    from scipy.spatial import cKDTree

    k = min(k, len(coords))
    _, nn = cKDTree(coords).query(coords, k=k, workers=-1)
    nn = nn.reshape(len(coords), k)
    out = np.zeros_like(values, dtype=np.float64)
    for j in range(k):  # k vectorised passes, not a per-cell loop
        out += values[nn[:, j]]
    return out / k


def cluster_cells(
    adata: ad.AnnData,
    *,
    n_clusters: int = 30,
    n_comps: int = 30,
    resolution: float = 1.0,
    n_neighbors: int = 15,
    seed: int = 0,
) -> np.ndarray:
    """Cluster labels: Leiden on a kNN graph when available, else k-means on PCA."""
    pcs = embed(adata, n_comps, seed=seed)
    try:
        import igraph as ig
        import leidenalg
    except ImportError:
        leidenalg = None
    if leidenalg is not None:
        from sklearn.neighbors import kneighbors_graph

        g = kneighbors_graph(pcs, n_neighbors=n_neighbors, include_self=False).tocoo()
        graph = ig.Graph(n=pcs.shape[0], edges=np.column_stack([g.row, g.col]).tolist())
        graph.simplify()
        part = leidenalg.find_partition(
            graph,
            leidenalg.RBConfigurationVertexPartition,
            resolution_parameter=resolution,
            seed=seed,
        )
        return np.asarray(part.membership)
    from sklearn.cluster import KMeans, MiniBatchKMeans

    k = min(n_clusters, pcs.shape[0])
    log.info("leidenalg/igraph not installed: clustering with k-means (k=%d)", k)
    if pcs.shape[0] > 50_000:
        km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=4096, n_init=3)
    else:
        km = KMeans(n_clusters=k, random_state=seed, n_init=4)
    return km.fit_predict(pcs)


def type_by_clusters(
    adata: ad.AnnData,
    panel: Panel | str,
    *,
    clusters: np.ndarray | None = None,
    min_score: float = 0.0,
    refine: bool = True,
    seed: int = 0,
    **cluster_options,
) -> pd.DataFrame:
    """Cluster, name each cluster by the panel scores of its mean cell, then (``refine``)
    use the most clearly named clusters as seeds of :func:`self_train` so that cells are
    re-called one by one (a cluster mixing types, e.g. by spill-over, is split again)."""
    if clusters is None:
        labels = cluster_cells(adata, seed=seed, **cluster_options)
    else:
        labels = np.asarray(clusters)
    xn = log_normalize(adata.X, None)
    scores = _scores_from(xn, adata, panel)
    codes, uniq = pd.factorize(labels)
    counts = np.bincount(codes).astype(np.float64)
    sums = np.zeros((len(uniq), scores.shape[1]))
    np.add.at(sums, codes, scores.to_numpy(np.float64))
    per_cluster = sums / counts[:, None]
    if refine:
        cell_level = pd.DataFrame(per_cluster[codes], index=scores.index, columns=scores.columns)
        probs = _self_train(xn, cell_level, smooth_k=0, seed=seed)
        out = _from_scores(probs, min_score, with_probs=probs is not cell_level)
    else:
        named = _from_scores(pd.DataFrame(per_cluster, columns=scores.columns), min_score)
        out = named.iloc[codes].set_index(scores.index)
    out["cluster"] = np.asarray(uniq)[codes]
    return out


# --------------------------------------------------------------------------- transfer
def type_by_transfer(
    adata: ad.AnnData,
    reference: ad.AnnData,
    *,
    reference_key: str = "cell_type",
    k: int = 15,
    n_comps: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """kNN label transfer from a labelled reference AnnData (shared genes, PCA space)."""
    from scipy.spatial import cKDTree
    from sklearn.decomposition import PCA

    if reference_key not in reference.obs:
        raise InputError(None, f"reference has no obs column {reference_key!r}")
    shared = pd.Index(adata.var_names.astype(str)).intersection(
        pd.Index(reference.var_names.astype(str))
    )
    if len(shared) < 10:
        raise InputError(None, f"reference shares only {len(shared)} genes with the data")
    q_idx = pd.Index(adata.var_names.astype(str)).get_indexer(shared)
    r_idx = pd.Index(reference.var_names.astype(str)).get_indexer(shared)
    # Library size on the shared genes, so both sides are normalised over the same features.
    rn = log_normalize(_csr(reference.X)[:, r_idx])
    qn = log_normalize(_csr(adata.X)[:, q_idx])
    mean, sd = gene_stats(rn)
    rz = np.vstack([z for _, z in scaled_chunks(rn, mean, sd)])
    n = min(n_comps, rz.shape[1] - 1, rz.shape[0] - 1)
    pca = PCA(n_components=n, svd_solver="randomized", random_state=seed).fit(rz)
    tree = cKDTree(pca.transform(rz))
    ref_types, type_names = pd.factorize(reference.obs[reference_key].astype(str))
    k = min(k, rz.shape[0])
    votes = np.zeros((adata.n_obs, len(type_names)))
    for rows, z in scaled_chunks(qn, mean, sd):
        _, nn = tree.query(pca.transform(z), k=k)
        nn = nn.reshape(len(z), k)
        for j in range(k):  # k passes over arrays, not a per-cell loop
            np.add.at(votes, (np.arange(rows.start, rows.stop), ref_types[nn[:, j]]), 1.0)
    votes /= k
    best = votes.argmax(axis=1)
    padded = np.hstack([np.zeros((len(votes), 1)), votes])  # a runner-up of 0 for one type
    top2 = np.sort(padded, axis=1)[:, -2:]
    calls = pd.DataFrame(
        {
            "cell_type": np.asarray(type_names, dtype=object)[best],
            "score": top2[:, 1],
            "confidence": top2[:, 1] - top2[:, 0],
        },
        index=adata.obs_names.astype(str),
    )
    return with_type_probs(calls, pd.DataFrame(votes, columns=list(type_names)))


# --------------------------------------------------------------------------- front door
def type_cells(
    adata: ad.AnnData,
    method: Method = "panel",
    *,
    panel: Panel | str | None = None,
    reference: ad.AnnData | None = None,
    reference_key: str = "cell_type",
    min_score: float = 0.0,
    smooth_k: int = 30,
    refine: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    """Type cells by ``method`` (``panel``, ``cluster`` or ``transfer``).

    ``panel`` (path or shipped name, default ``human_breast``) is used by ``panel`` and
    ``cluster``; ``reference`` (with ``obs[reference_key]``) by ``transfer``; ``smooth_k``
    (panel only) pools scores over expression neighbours, 0 to switch off; ``refine``
    (panel, cluster) re-calls every cell with a classifier trained on the confident calls.
    """
    if adata.n_obs == 0:
        raise InputError(None, "no cells to type")
    if method == "transfer":
        if reference is None:
            raise InputError(None, "label transfer needs a reference AnnData")
        return type_by_transfer(adata, reference, reference_key=reference_key, seed=seed)
    panel = panel if panel is not None else "human_breast"
    if method == "panel":
        return type_by_panel(
            adata, panel, min_score=min_score, smooth_k=smooth_k, refine=refine, seed=seed
        )
    if method == "cluster":
        return type_by_clusters(adata, panel, min_score=min_score, refine=refine, seed=seed)
    raise InputError(None, f"unknown typing method {method!r} (panel, cluster, transfer)")


def image_classes(
    types: pd.DataFrame, taxonomy: Taxonomy, *, min_confidence: float = 0.2
) -> pd.Series:
    """Image class per cell: the taxonomy's class of ``cell_type``; ``unknown`` when the type
    is unmapped/unassigned or ``confidence < min_confidence``."""
    mapped = map_to_classes(types["cell_type"], taxonomy)
    return mapped.where(types["confidence"].to_numpy() >= min_confidence, UNKNOWN)


def map_to_classes(cell_types: pd.Series, taxonomy: Taxonomy) -> pd.Series:
    """Taxonomy class of each type (``unknown`` when unmapped); a hashed lookup, no loop."""
    return cell_types.astype(str).map(taxonomy.mapping).fillna(UNKNOWN).astype(object)


def class_probabilities(
    type_probs: pd.DataFrame, taxonomy: Taxonomy, *, renormalise: bool = False
) -> np.ndarray:
    """Per-class probabilities ``N x K`` (taxonomy class order) from per-type ones ``N x T``
    (columns = fine types; non-negative).

    A class's probability is the sum over the types it merges -- a cell split 50/50 between
    T and B cells is a sure lymphocyte. Types mapped to ``unknown`` or absent from the taxonomy
    add nothing, so without ``renormalise`` a row's shortfall from its total is the
    ``unknown`` share; with it, rows sum to 1 (all-zero where everything is on unknown types).
    """
    probs = type_probs.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise InputError(None, "type probabilities must be finite and non-negative")
    names = taxonomy.classes.names
    member = np.zeros((probs.shape[1], len(names)))
    codes = pd.Index(names).get_indexer(map_to_classes(pd.Series(type_probs.columns), taxonomy))
    member[np.flatnonzero(codes >= 0), codes[codes >= 0]] = 1.0
    out = probs @ member
    denom = out.sum(axis=1, keepdims=True) if renormalise else probs.sum(axis=1, keepdims=True)
    return np.divide(out, denom, out=np.zeros_like(out), where=denom > 0).astype(np.float32)

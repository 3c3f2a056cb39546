"""Small in-memory ST inputs shared by the st tests."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import shapely

from wsi_stnuc.st.bundle import STBundle

# Three lineages with their own markers, plus shared housekeeping genes.
MARKERS = {
    "T": ["CD3E", "CD3D", "TRAC", "CD2"],
    "Malignant": ["EPCAM", "KRT8", "ERBB2", "CDH1"],
    "Fibroblast": ["LUM", "POSTN", "DCN", "COL1A1"],
}
HOUSEKEEPING = ["ACTB", "GAPDH", "RPLP0", "B2M", "EEF1A1", "TPT1", "MALAT1", "FTL"]


def toy_expression(n_per_type: int = 60, seed: int = 0, depth: float = 60.0):
    """Poisson counts where each cell's markers are 20x enriched; returns (X, genes, truth)."""
    rng = np.random.default_rng(seed)
    genes = [g for gs in MARKERS.values() for g in gs] + HOUSEKEEPING
    truth = np.repeat(list(MARKERS), n_per_type)
    base = np.ones((len(truth), len(genes)))
    for t, gs in MARKERS.items():
        idx = [genes.index(g) for g in gs]
        base[np.ix_(truth == t, idx)] = 20.0
    rate = base / base.sum(axis=1, keepdims=True) * depth
    return rng.poisson(rate).astype(np.float32), genes, truth


def toy_bundle(n_per_type: int = 60, seed: int = 0, spacing: float = 15.0) -> STBundle:
    """Cells on a jittered grid (µm) with 4 µm-radius round nuclei and typed expression."""
    x, genes, truth = toy_expression(n_per_type, seed)
    n = len(truth)
    rng = np.random.default_rng(seed + 1)
    side = int(np.ceil(np.sqrt(n)))
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:n]
    centres = 20.0 + grid * spacing + rng.uniform(-2, 2, (n, 2))
    ids = [f"cell-{i}" for i in range(n)]
    adata = ad.AnnData(
        sp.csr_matrix(x),
        obs=pd.DataFrame({"truth": truth}, index=ids),
        var=pd.DataFrame(index=genes),
    )
    nuclei = gpd.GeoDataFrame(
        {"cell_id": ids}, geometry=shapely.buffer(shapely.points(centres), 4.0, quad_segs=4)
    )
    return STBundle(adata, nuclei, None, 0.2125, Path("<toy>"), {})


@pytest.fixture
def bundle() -> STBundle:
    return toy_bundle()


@pytest.fixture
def reference() -> ad.AnnData:
    """A labelled reference drawn from the same generator (other cells)."""
    x, genes, truth = toy_expression(40, seed=5)
    ref = ad.AnnData(
        sp.csr_matrix(x), obs=pd.DataFrame({"cell_type": truth}), var=pd.DataFrame(index=genes)
    )
    ref.obs_names = [f"r{i}" for i in range(ref.n_obs)]
    return ref


def paint_he(points, shape, radius):
    """Pink background with purple disks (H&E-like) of ``radius`` px at ``points`` (x, y)."""
    from scipy import ndimage as ndi

    seeds = np.ones(shape, bool)
    ij = np.floor(np.asarray(points)[:, ::-1]).astype(int)
    ok = (ij >= 0).all(axis=1) & (ij[:, 0] < shape[0]) & (ij[:, 1] < shape[1])
    seeds[ij[ok, 0], ij[ok, 1]] = False
    disk = ndi.distance_transform_edt(seeds) <= radius
    img = np.empty((*shape, 3), np.uint8)
    img[:] = (235, 190, 210)
    img[disk] = (70, 40, 130)
    return img


class ArraySlide:
    """The slice of the SlideReader API refinement uses, over an in-memory image."""

    def __init__(self, image, mpp):
        self.image, self.mpp, self.path = image, (mpp, mpp), "array-slide"
        self.dimensions = (image.shape[1], image.shape[0])

    def read_region(self, x0, y0, w, h, mpp=None):
        assert mpp is None or mpp == self.mpp[0]
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0 = int(round(x0)), int(round(y0))
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1 = min(x0 + w, self.dimensions[0])
        sy1 = min(y0 + h, self.dimensions[1])
        if sx1 > sx0 and sy1 > sy0:
            out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = self.image[sy0:sy1, sx0:sx1]
        return out


@pytest.fixture
def he_tools():
    """``(paint_he, ArraySlide)``: draw H&E-like nuclei and wrap an array as a slide."""
    return paint_he, ArraySlide

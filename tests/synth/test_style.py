"""The hard painting style: overlapping nuclei with visible outlines, debris that is in no
truth, and a classical threshold that is no longer near-perfect on it."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
import tifffile
from scipy import ndimage

from wsi_stnuc.evaluation.baseline import classical_nucleus_table
from wsi_stnuc.evaluation.metrics import evaluate_polygons
from wsi_stnuc.synth.artefacts import debris_od, stain_strength
from wsi_stnuc.synth.bundle import make_synthetic_bundle
from wsi_stnuc.synth.noise import STNoise
from wsi_stnuc.synth.nuclei import Nuclei, visible_polygons
from wsi_stnuc.synth.style import PaintStyle


def _bundle(path, style):
    return make_synthetic_bundle(path, seed=1, width=768, height=640, noise=STNoise(), style=style)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("style")
    return _bundle(root / "clean", PaintStyle.clean()), _bundle(root / "hard", PaintStyle.hard())


def test_hard_truth_has_touching_nuclei_but_no_overlapping_outlines(pair):
    _, hard = pair
    t = gpd.read_parquet(hard.truth)
    geoms = t.geometry.values
    assert (shapely.get_type_id(geoms) == 3).all() and shapely.is_valid(geoms).all()
    i, j = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    i, j = i[i < j], j[i < j]
    touching = len(i)
    overlap = shapely.area(shapely.intersection(geoms[i], geoms[j]))
    assert touching > 20  # nuclei now touch (the clean style keeps a gap)
    assert overlap.max() < 1.0  # visible outlines: only shared edges, no shared area


def test_visible_polygons_give_the_overlap_to_the_nucleus_on_top():
    one = dict(a=np.array([10.0, 10.0]), b=np.array([10.0, 10.0]), theta=np.zeros(2),
               amp=np.zeros((2, 2)), phase=np.zeros((2, 2)), kind=np.zeros(2, int),
               nucleolus=np.zeros((2, 2)))  # fmt: skip
    nuclei = Nuclei(cx=np.array([50.0, 62.0]), cy=np.array([50.0, 50.0]),
                    depth=np.array([1, 0]), **one)  # fmt: skip
    full = nuclei.polygons()
    vis = visible_polygons(nuclei)
    assert shapely.area(vis[0]) == pytest.approx(shapely.area(full[0]))  # on top: whole
    assert shapely.area(vis[1]) < 0.8 * shapely.area(full[1])  # below: loses the overlap
    assert shapely.area(shapely.intersection(vis[0], vis[1])) < 1e-6


def test_debris_is_dark_small_and_on_tissue():
    rng = np.random.default_rng(0)
    tissue = np.zeros((400, 400), bool)
    tissue[100:300, 100:300] = True
    od = debris_od(rng, tissue, 0.5, per_mm2=2000)
    assert od.max() > 1.7  # darker than any nucleus (lymphocytes ~1.55)
    near = ndimage.binary_dilation(tissue, iterations=10)  # spread 2.5 µm + radius 1.4 µm
    assert (od[~near] == 0).all()
    assert 0 < (od > 0).mean() < 0.05


def test_stain_strength_drifts_around_one():
    h, e = stain_strength(np.random.default_rng(0), (256, 256), 0.5, 0.2)
    assert h.min() >= 0.4 and h.max() <= 1.8 and abs(h.mean() - 1) < 0.2
    assert not np.allclose(h, e)
    ones, _ = stain_strength(np.random.default_rng(0), (8, 8), 0.5, 0.0)
    assert (ones == 1).all()


def test_threshold_is_no_longer_near_perfect_on_the_hard_style(pair):
    scores = {}
    for b in pair:
        rgb = tifffile.imread(b.slide)
        pred = classical_nucleus_table(rgb, b.mpp)
        scores[b.root.name] = evaluate_polygons(gpd.read_parquet(b.truth), pred, mpp=b.mpp)["pq"]
    assert scores["clean"] > 0.75
    assert scores["hard"] < scores["clean"] - 0.2

"""The synthetic bundle: deterministic, non-overlapping nuclei, visible class identities,
Xenium geometry that maps back onto the slide through the written alignment."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
import tifffile
import yaml
from skimage.draw import polygon as fill_polygon

from wsi_stnuc.formats import Xenium
from wsi_stnuc.synth.bundle import make_synthetic_bundle, slide_to_microns
from wsi_stnuc.synth.noise import STNoise


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A small bundle with noise off: ST nuclei equal the truth."""
    return make_synthetic_bundle(
        tmp_path_factory.mktemp("clean"), seed=3, width=640, height=512, noise=STNoise()
    )


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    return make_synthetic_bundle(tmp_path_factory.mktemp("noisy"), seed=3, width=640, height=512)


def test_files_and_metadata(clean):
    for p in (clean.slide, clean.truth, clean.panel, clean.alignment_csv):
        assert p.is_file()
    with tifffile.TiffFile(clean.slide) as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.compression == 7  # JPEG
        assert page.shape == (512, 640, 3)
        x_res = page.tags["XResolution"].value
        assert 1e4 / (x_res[0] / x_res[1]) == pytest.approx(0.5, rel=1e-3)  # px/cm -> µm/px
    panel = yaml.safe_load(clean.panel.read_text())
    assert panel["name"] and set(panel["types"]) == {
        "T",
        "B",
        "Malignant",
        "Fibroblast",
        "Endothelial",
    }
    np.testing.assert_allclose(np.loadtxt(clean.alignment_csv, delimiter=","), clean.alignment)
    assert clean.classes.names == ("epithelial", "inflammatory", "connective")
    meta = pq.read_schema(clean.truth).metadata
    assert b"wsi_stnuc" in meta and b"geo" in meta


def test_deterministic_by_seed(clean, tmp_path):
    again = make_synthetic_bundle(tmp_path / "a", seed=3, width=640, height=512, noise=STNoise())
    other = make_synthetic_bundle(tmp_path / "b", seed=4, width=640, height=512, noise=STNoise())
    t0, t1 = gpd.read_parquet(clean.truth), gpd.read_parquet(again.truth)
    assert t0.drop(columns="geometry").equals(t1.drop(columns="geometry"))
    assert shapely.equals_exact(t0.geometry.values, t1.geometry.values, 0).all()
    c0 = pq.read_table(clean.xenium_dir / Xenium.CELLS_PARQUET)
    assert c0.equals(pq.read_table(again.xenium_dir / Xenium.CELLS_PARQUET))
    assert tifffile.imread(clean.slide).tobytes() == tifffile.imread(again.slide).tobytes()
    t2 = gpd.read_parquet(other.truth)
    assert (
        len(t2) != len(t0)
        or not shapely.equals_exact(t0.geometry.values, t2.geometry.values, 0).all()
    )


def test_nuclei_do_not_overlap(clean):
    t = gpd.read_parquet(clean.truth)
    assert len(t) > 150 and t.geometry.is_valid.all()
    tree = shapely.STRtree(t.geometry.values)
    pairs = tree.query(t.geometry.values, predicate="intersects")
    assert (pairs[0] == pairs[1]).all()


def test_types_and_classes_present(clean):
    t = gpd.read_parquet(clean.truth)
    assert set(t["cell_type"]) == {"T", "B", "Malignant", "Fibroblast", "Endothelial"}
    expect = {
        "T": "inflammatory",
        "B": "inflammatory",
        "Malignant": "epithelial",
        "Fibroblast": "connective",
        "Endothelial": "connective",
    }
    assert (t["image_class"] == t["cell_type"].map(expect)).all()


def _mean_gray_inside(rgb, polys):
    gray = rgb.mean(axis=2)
    out = []
    for p in polys:
        xy = shapely.get_coordinates(p) - 0.5  # pixel centres
        rr, cc = fill_polygon(xy[:, 1], xy[:, 0], gray.shape)
        out.append(gray[rr, cc].mean())
    return np.array(out)


def test_class_identities_visible_in_image(clean):
    t = gpd.read_parquet(clean.truth)
    rgb = tifffile.imread(clean.slide)
    area_um2 = t.area * clean.mpp**2
    rect = t.geometry.minimum_rotated_rectangle()
    mrr = shapely.get_coordinates(rect.values).reshape(len(t), 5, 2)
    e1 = np.linalg.norm(mrr[:, 1] - mrr[:, 0], axis=1)
    e2 = np.linalg.norm(mrr[:, 2] - mrr[:, 1], axis=1)
    elong = np.maximum(e1, e2) / np.minimum(e1, e2)
    by = t["cell_type"]
    lymph, mal, spin = (
        by.isin(["T", "B"]),
        by == "Malignant",
        by.isin(["Fibroblast", "Endothelial"]),
    )
    # lymphocytes ~7 µm across, malignant ~11-13 µm, spindles elongated
    d_lymph = 2 * np.sqrt(area_um2[lymph] / np.pi).median()
    d_mal = 2 * np.sqrt(area_um2[mal] / np.pi).median()
    assert 6 < d_lymph < 8.5 and 10 < d_mal < 14
    assert np.median(elong[spin]) > 2.2 and np.median(elong[lymph | mal]) < 1.5
    gray = _mean_gray_inside(rgb, t.geometry.values)
    assert np.median(gray[lymph]) + 25 < np.median(gray[mal])  # lymphocytes much darker
    assert np.median(gray[spin]) < np.median(gray[mal])


def test_alignment_direction_exact_without_noise(clean):
    """Truth centroid -> M -> * pixel_size equals the nucleus centroid written (µm)."""
    t = gpd.read_parquet(clean.truth).set_index("cell_id")
    nb = pq.read_table(clean.xenium_dir / Xenium.NUCLEUS_BOUNDARIES).to_pandas()
    rings = shapely.linearrings(nb[["vertex_x", "vertex_y"]].to_numpy(), indices=nb["label_id"] - 1)
    polys = shapely.polygons(rings)
    cid = nb.groupby("label_id")["cell_id"].first().to_numpy()
    cen_um = shapely.get_coordinates(shapely.centroid(polys))
    truth_cen = shapely.get_coordinates(t.loc[cid].geometry.centroid.values)
    hom = np.c_[truth_cen, np.ones(len(truth_cen))] @ clean.alignment.T
    np.testing.assert_allclose(hom[:, :2] * clean.pixel_size, cen_um, atol=2e-3)
    # the inverse direction would land hundreds of µm away
    wrong = np.c_[truth_cen, np.ones(len(truth_cen))] @ np.linalg.inv(clean.alignment).T
    assert np.abs(wrong[:, :2] * clean.pixel_size - cen_um).max() > 100
    # cells.parquet centroids (of the expanded cell) stay within ~1 µm of the nucleus
    cells = pq.read_table(clean.xenium_dir / Xenium.CELLS_PARQUET).to_pandas().set_index("cell_id")
    d = cells.loc[cid, ["x_centroid", "y_centroid"]].to_numpy() - cen_um
    assert np.median(np.hypot(*d.T)) < 1.0


def test_noisy_bundle_misses_and_merges(noisy):
    t = gpd.read_parquet(noisy.truth)
    frac = t["st_status"].value_counts(normalize=True)
    assert 0.02 < frac["missed"] < 0.09
    assert 0.0 < frac.get("merged", 0) < 0.06
    assert noisy.n_cells == t.loc[t["st_status"] != "missed", "st_cell_id"].nunique()
    cells = pq.read_table(noisy.xenium_dir / Xenium.CELLS_PARQUET).to_pandas()
    assert set(cells["cell_id"]) == set(t["st_cell_id"]) - {""}
    # misregistered by ~2 µm but still on the right nucleus: the ST centroid of an "ok" nucleus
    # is far closer to its own truth nucleus than the typical nucleus spacing
    ok = t[t["st_status"] == "ok"]
    truth_um = slide_to_microns(ok.geometry.centroid.values, noisy.alignment, noisy.pixel_size)
    st = cells.set_index("cell_id").loc[ok["st_cell_id"], ["x_centroid", "y_centroid"]].to_numpy()
    err = np.hypot(*(shapely.get_coordinates(truth_um) - st).T)
    assert 0.5 < np.median(err) < 4.0


def test_low_count_cells_exist(noisy):
    cells = pq.read_table(noisy.xenium_dir / Xenium.CELLS_PARQUET).to_pandas()
    tc = cells["transcript_counts"]
    assert 30 < tc.median() < 200
    assert 0.03 < (tc < 10).mean() < 0.2


def test_transcripts_match_counts(tmp_path):
    b = make_synthetic_bundle(tmp_path, seed=5, width=384, height=384, transcripts=True)
    tx = pq.read_table(b.xenium_dir / Xenium.TRANSCRIPTS).to_pandas()
    assert {"cell_id", "x_location", "y_location", "z_location", "feature_name", "qv",
            "overlaps_nucleus"} <= set(tx.columns)  # fmt: skip
    cells = pq.read_table(b.xenium_dir / Xenium.CELLS_PARQUET).to_pandas().set_index("cell_id")
    good = tx[(tx["qv"] >= 20) & (tx["cell_id"] != "UNASSIGNED")]
    genes = good[~good["feature_name"].str.startswith("NegControl")]
    per_cell = genes.groupby("cell_id").size().reindex(cells.index, fill_value=0)
    np.testing.assert_array_equal(per_cell.to_numpy(), cells["transcript_counts"].to_numpy())
    ctrl = good[good["feature_name"].str.startswith("NegControl")].groupby("cell_id").size()
    ctrl = ctrl.reindex(cells.index, fill_value=0)
    np.testing.assert_array_equal(ctrl.to_numpy(), cells["control_probe_counts"].to_numpy())
    assert 0.02 < (tx["qv"] < 20).mean() < 0.15
    assert 0.03 < (tx["cell_id"] == "UNASSIGNED").mean() < 0.15
    # molecules of a cell lie in its outline; a good share of them over the nucleus
    assigned = tx[tx["cell_id"] != "UNASSIGNED"]
    assert 0.2 < assigned["overlaps_nucleus"].mean() < 0.9
    xen = pytest.importorskip("wsi_stnuc.st.xenium")
    assert xen.read_xenium(b.xenium_dir).transcripts is not None

"""CLI ``celltype`` and ``labels`` end to end on a small Xenium-format bundle and slide."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import shapely
from click.testing import CliRunner
from scipy import ndimage as ndi

from wsi_stnuc_cli.main import cli

GENES = {
    "T": ["CD3E", "CD3D", "TRAC", "CD2"],
    "Malignant": ["EPCAM", "KRT8", "ERBB2", "CDH1"],
    "Fibroblast": ["LUM", "POSTN", "DCN", "COL1A1"],
}
PANEL_YAML = "name: toy\ntypes:\n" + "".join(f"  {t}: [{', '.join(g)}]\n" for t, g in GENES.items())
PS = 0.2125  # µm per morphology px
MPP = 0.5  # slide µm/px
# H&E px -> morphology px (10x convention), asymmetric
M = np.array([[MPP / PS, 0.0, -40.0], [0.0, MPP / PS * 1.01, 25.0], [0.0, 0.0, 1.0]])


def _expression(n_per_type, rng):
    genes = [g for gs in GENES.values() for g in gs] + ["ACTB", "GAPDH", "B2M", "FTL"]
    truth = np.repeat(list(GENES), n_per_type)
    base = np.ones((len(truth), len(genes)))
    for t, gs in GENES.items():
        base[np.ix_(truth == t, [genes.index(g) for g in gs])] = 20.0
    counts = rng.poisson(base / base.sum(1, keepdims=True) * 60)
    return counts.astype(np.int64), genes, truth


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    from wsi_stnuc.slide.write import write_pyramidal_tiff
    from wsi_stnuc.st.align import apply_affine
    from wsi_stnuc.synth.xenium_writer import (
        write_alignment_csv,
        write_xenium_bundle,
        xenium_cell_ids,
    )

    root = tmp_path_factory.mktemp("st")
    rng = np.random.default_rng(0)
    counts, genes, truth = _expression(50, rng)
    n = len(truth)
    side = int(np.ceil(np.sqrt(n)))
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:n]
    centres_um = 30.0 + grid * 14.0 + rng.uniform(-2, 2, (n, 2))
    nuclei = shapely.buffer(shapely.points(centres_um), 4.0, quad_segs=4)
    ids = xenium_cell_ids(n)
    bundle = write_xenium_bundle(
        root / "xenium",
        cell_ids=ids,
        nuclei_um=nuclei,
        counts=counts,
        genes=genes,
        pixel_size=PS,
    )
    write_alignment_csv(root / "he_imagealignment.csv", M)
    # the H&E: nuclei painted where the true alignment puts them
    px = apply_affine(np.linalg.inv(M), centres_um / PS)
    h, w = int(px[:, 1].max() + 80), int(px[:, 0].max() + 80)
    seeds = np.ones((h, w), bool)
    seeds[px[:, 1].astype(int), px[:, 0].astype(int)] = False
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (235, 190, 210)
    img[ndi.distance_transform_edt(seeds) <= 8] = (70, 40, 130)
    write_pyramidal_tiff(root / "he.tif", img, MPP, compression="zlib")
    (root / "panel.yaml").write_text(PANEL_YAML)
    return {"root": root, "xenium": bundle, "truth": dict(zip(ids, truth, strict=True)), "px": px}


def test_labels_end_to_end(bundle_dir, tmp_path):
    from wsi_stnuc.st.labels import read_labelset

    r = bundle_dir["root"]
    out = tmp_path / "labels.parquet"
    res = CliRunner().invoke(
        cli,
        [
            "labels",
            "--xenium",
            str(bundle_dir["xenium"]),
            "--slide",
            str(r / "he.tif"),
            "--alignment",
            str(r / "he_imagealignment.csv"),
            "--panel",
            str(r / "panel.yaml"),
            "--out",
            str(out),
            "--qupath",
            str(tmp_path / "labels.geojson"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "nuclei labelled" in res.output and "registration" in res.output
    gdf, classes = read_labelset(out)
    assert classes.names == ("epithelial", "inflammatory", "connective")
    assert len(gdf) == 150
    truth = (
        gdf["cell_id"]
        .map(bundle_dir["truth"])
        .map({"T": "inflammatory", "Malignant": "epithelial", "Fibroblast": "connective"})
    )
    known = gdf["image_class"] != "unknown"
    assert (gdf["image_class"][known] == truth[known]).mean() > 0.95
    cents = shapely.get_coordinates(shapely.centroid(np.asarray(gdf.geometry.values)))
    order = pd.Index(list(bundle_dir["truth"])).get_indexer(gdf["cell_id"])
    assert np.median(np.linalg.norm(cents - bundle_dir["px"][order], axis=1)) < 1.0
    doc = json.loads((tmp_path / "labels.geojson").read_text())
    assert len(doc["features"]) == 150
    meta = json.loads(pq.read_schema(out).metadata[b"wsi_stnuc"])
    assert meta["report"]["n_labels"] == 150


def test_labels_h_weight_keeps_registered_polygons(bundle_dir, tmp_path):
    from wsi_stnuc.st.labels import read_labelset

    r = bundle_dir["root"]
    out = tmp_path / "labels.parquet"
    args = ["labels", "--xenium", str(bundle_dir["xenium"]), "--slide", str(r / "he.tif"),
            "--alignment", str(r / "he_imagealignment.csv"), "--panel", str(r / "panel.yaml"),
            "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(cli, [*args, "--h-weight"])
    assert res.exit_code == 0, res.output
    assert "H&E support: mean polygon weight" in res.output
    gdf, _ = read_labelset(out)
    assert len(gdf) == 150 and gdf["weight"].between(0, 1).all()
    assert gdf["weight"].median() > 0.9  # polygons sit on their nuclei
    plain = CliRunner().invoke(cli, [*args[:-1], str(tmp_path / "plain.parquet")])
    assert (
        plain.exit_code == 0 and (read_labelset(tmp_path / "plain.parquet")[0]["weight"] == 1).all()
    )


def _labels_args(bundle_dir, out):
    r = bundle_dir["root"]
    return ["labels", "--xenium", str(bundle_dir["xenium"]), "--slide", str(r / "he.tif"),
            "--panel", str(r / "panel.yaml"), "--out", str(out)]  # fmt: skip


def test_labels_summary_matches_the_file_with_h_weight(bundle_dir, tmp_path):
    from PIL import Image

    from wsi_stnuc.st.labels import read_labelset
    from wsi_stnuc.st.qc_figures import SIZE_PX

    out = tmp_path / "hw.parquet"
    res = CliRunner().invoke(cli, [*_labels_args(bundle_dir, out), "--alignment",
                                   str(bundle_dir["root"] / "he_imagealignment.csv"),
                                   "--h-weight"])  # fmt: skip
    assert res.exit_code == 0, res.output
    gdf, _ = read_labelset(out)
    counts = gdf["image_class"].value_counts()
    for cls in ("epithelial", "inflammatory", "connective", "unknown"):
        line = next(x for x in res.output.splitlines() if x.startswith(f"class: {cls} "))
        assert int(line.split()[-1]) == counts.get(cls, 0), line
    report = json.loads(pq.read_schema(out).metadata[b"wsi_stnuc"])["report"]
    assert report["per_class"] == {c: int(counts.get(c, 0)) for c in report["per_class"]}
    assert report["registration_qc"]["matched_fraction"] > 0.8
    assert "WARNING" not in res.output
    png = tmp_path / "hw.qc.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == SIZE_PX
        assert np.asarray(im.convert("L")).std() > 10  # a picture, not a blank canvas
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == len(set(lines))  # nothing printed twice


def test_labels_qc_options_and_weak_registration_warning(bundle_dir, tmp_path):
    base = [*_labels_args(bundle_dir, tmp_path / "q.parquet"), "--no-refine"]
    a = np.linalg.inv(M) @ np.diag([1 / PS, 1 / PS, 1])
    a[0, 2] += 12.0  # 6 µm off: every ST nucleus lands between H&E nuclei
    text = ",".join(f"{v:.10g}" for v in a[:2].ravel())
    res = CliRunner().invoke(cli, [*base, "--matrix", text])
    assert res.exit_code == 0, res.output
    assert "WARNING: registration looks weak" in res.output
    # The QC thresholds reach qc_cells: nuclei are ~49 µm², counts ~60 per cell.
    for option, value, reason in (("--max-area", "40", "nucleus_area"),
                                  ("--min-area", "60", "nucleus_area"),
                                  ("--min-counts", "100000", "low_counts")):  # fmt: skip
        res = CliRunner().invoke(cli, [*base, "--matrix", text, option, value])
        assert res.exit_code == 2 and "no cell survives QC" in res.output
        assert f"dropped: {reason}" in res.output and " 150" in res.output


def test_labels_matrix_and_errors(bundle_dir, tmp_path):
    r = bundle_dir["root"]
    base = [
        "labels",
        "--xenium",
        str(bundle_dir["xenium"]),
        "--slide",
        str(r / "he.tif"),
        "--panel",
        str(r / "panel.yaml"),
        "--out",
        str(tmp_path / "l.parquet"),
        "--no-refine",
    ]
    res = CliRunner().invoke(cli, [*base, "--matrix", "1,0,0,0,0,0"])
    assert res.exit_code == 2 and "singular" in res.output
    res = CliRunner().invoke(cli, base)  # no alignment anywhere
    assert res.exit_code != 0 and "no alignment" in res.output
    bad = tmp_path / "bad_he_imagealignment.csv"
    bad.write_text("1,2\n3,4\n")
    res = CliRunner().invoke(cli, [*base, "--alignment", str(bad)])
    assert res.exit_code == 2 and "bad_he_imagealignment.csv" in res.output
    # µm -> px straight from the command line
    a = np.linalg.inv(M) @ np.diag([1 / PS, 1 / PS, 1])
    text = ",".join(f"{v:.10g}" for v in a[:2].ravel())
    res = CliRunner().invoke(cli, [*base, "--matrix", text])
    assert res.exit_code == 0, res.output


def test_celltype_csv(bundle_dir, tmp_path):
    r = bundle_dir["root"]
    out = tmp_path / "types.csv"
    res = CliRunner().invoke(
        cli,
        [
            "celltype",
            str(bundle_dir["xenium"]),
            "--panel",
            str(r / "panel.yaml"),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert list(df.columns) == ["cell_id", "cell_type", "image_class", "confidence"]
    assert (df["cell_type"] == df["cell_id"].map(bundle_dir["truth"])).mean() > 0.9
    raw = tmp_path / "raw.csv"
    args = ["celltype", str(bundle_dir["xenium"]), "--panel", str(r / "panel.yaml")]
    res = CliRunner().invoke(cli, [*args, "--no-self-train", "--out", str(raw)])
    assert res.exit_code == 0, res.output
    raw_df = pd.read_csv(raw)
    assert (raw_df["cell_type"] == raw_df["cell_id"].map(bundle_dir["truth"])).mean() > 0.9
    # label transfer from an .h5ad reference, typed data from an .h5ad too
    from wsi_stnuc.st.xenium import read_xenium

    adata = read_xenium(bundle_dir["xenium"]).adata
    adata.obs = adata.obs[[]]
    adata.write_h5ad(tmp_path / "q.h5ad")
    counts, genes, truth = _expression(30, np.random.default_rng(9))
    ref = ad.AnnData(
        sp.csr_matrix(counts.astype(np.float32)),
        obs=pd.DataFrame({"cell_type": truth}, index=[f"r{i}" for i in range(90)]),
        var=pd.DataFrame(index=genes),
    )
    ref.write_h5ad(tmp_path / "ref.h5ad")
    res = CliRunner().invoke(
        cli,
        [
            "celltype",
            str(tmp_path / "q.h5ad"),
            "--reference",
            str(tmp_path / "ref.h5ad"),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert (df["cell_type"] == df["cell_id"].map(bundle_dir["truth"])).mean() > 0.9
    res = CliRunner().invoke(
        cli, ["celltype", str(tmp_path / "q.h5ad"), "--method", "transfer", "--out", str(out)]
    )
    assert res.exit_code != 0 and "--reference" in res.output


def test_review_merges_qupath_edits(tmp_path):
    import geopandas as gpd

    from wsi_stnuc.classes import ClassTable
    from wsi_stnuc.st.labels import read_labelset, write_labelset
    from wsi_stnuc.st.review import write_labelset_qupath

    classes = ClassTable.from_names(["epithelial", "inflammatory"])
    labels = gpd.GeoDataFrame(
        {"cell_id": ["a", "b", "c"], "cell_type": ["Malignant", "T", "T"],
         "image_class": ["epithelial", "inflammatory", "inflammatory"],
         "confidence": np.float32([0.5, 0.6, 0.7]), "weight": np.float32([1, 1, 1])},
        geometry=shapely.buffer(shapely.points([[10, 10], [40, 10], [70, 10]]), 5),
    )  # fmt: skip
    write_labelset(labels, tmp_path / "labels.parquet", classes)
    exported = write_labelset_qupath(labels, tmp_path / "labels.geojson", classes)
    doc = json.loads(exported.read_text())
    doc["features"][1]["properties"]["classification"] = {"name": "epithelial", "color": [0, 0, 0]}
    del doc["features"][2]
    edited = tmp_path / "edited.geojson"
    edited.write_text(json.dumps(doc))
    out = tmp_path / "reviewed.parquet"
    res = CliRunner().invoke(cli, ["review", str(edited), "--labels", str(tmp_path / "labels.parquet"),
                                   "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "kept 1, deleted 1, reclassified 1, drawn 0" in res.output
    assert "inflammatory -> epithelial: 1" in res.output
    reviewed, _ = read_labelset(out)
    assert list(reviewed["image_class"]) == ["epithelial", "epithelial"]
    assert list(reviewed["source"]) == ["st", "reviewed"]
    meta = json.loads(pq.read_schema(out).metadata[b"wsi_stnuc"])
    assert meta["review"]["deleted"] == 1

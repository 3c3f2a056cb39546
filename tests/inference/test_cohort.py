"""Cohort runs: input expansion, safe names, fault isolation, serial == distributed."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import tifffile

from wsi_stnuc.errors import InputError
from wsi_stnuc.inference.cohort import MANIFEST, SUMMARY, collect_slides, run_cohort, safe_name


def _load_infer_helpers():
    spec = importlib.util.spec_from_file_location(
        "_infer_test_helpers", Path(__file__).with_name("test_infer.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


H = _load_infer_helpers()
OPTS = {"core": 64, "halo": 24, "batch_size": 4, "tissue": False, "workers": 1}


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    H.synthetic_slide(root / "a.tif", size=(200, 170), seed=1)
    (root / "sub").mkdir()
    H.synthetic_slide(root / "sub" / "b.tiff", size=(150, 210), seed=2)
    (root / "notes.txt").write_text("not a slide")
    return root


def test_safe_name():
    assert safe_name("../x") == "x"
    assert safe_name("/etc/passwd") == "etc_passwd"
    assert safe_name("a b/c?.d") == "a_b_c_.d"
    assert safe_name("..") == ""
    assert safe_name("ok-name_1.2") == "ok-name_1.2"


def _stems(rows) -> dict[str, dict]:
    return {Path(r["path"]).name.split(".")[0]: r for r in rows}


def test_collect_folder_glob_manifest(cohort_dir, tmp_path):
    jobs = collect_slides([cohort_dir])
    names = [j.name for j in jobs]
    assert [n.rsplit("-", 1)[0] for n in names] == ["a", "b"]
    assert [j.name for j in collect_slides([str(cohort_dir / "**" / "*.tif*")])] == names
    # a slide's name comes from its own path, not from what else is listed
    assert collect_slides([cohort_dir / "sub" / "b.tiff"])[0].name == names[1]
    manifest = tmp_path / "m.csv"
    pd.DataFrame(
        {
            "path": [str(cohort_dir / "a.tif"), os.path.relpath(cohort_dir / "sub/b.tiff", tmp_path),
                     str(cohort_dir / "a.tif"), str(cohort_dir / "a.tif")],
            "mpp": [0.25, None, None, None],
            "name": ["../evil", "/abs/path", "we!rd name", None],
        }
    ).to_csv(manifest, index=False)  # fmt: skip
    jobs = collect_slides([manifest], mpp=0.5)
    # one job per file: the later rows of a.tif are the same slide
    assert [j.name for j in jobs] == ["evil", "abs_path"]
    assert [j.mpp for j in jobs] == [0.25, 0.5]
    assert len(collect_slides([cohort_dir / "a.tif"] * 3)) == 1
    two = tmp_path / "two.csv"
    pd.DataFrame({"path": [str(cohort_dir / "a.tif"), str(cohort_dir / "sub/b.tiff")],
                  "name": ["same", "same"]}).to_csv(two, index=False)  # fmt: skip
    with pytest.raises(InputError, match="also given"):
        collect_slides([two])
    with pytest.raises(InputError, match="nothing_here"):
        collect_slides([tmp_path / "nothing_here"])
    bad = tmp_path / "bad.csv"
    bad.write_text("file,x\n1,2\n")
    with pytest.raises(InputError, match="path"):
        collect_slides([bad])


def test_manifest_names_stay_inside_out(cohort_dir, tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": [str(cohort_dir / "a.tif")], "name": ["../../escape"]}).to_csv(
        manifest, index=False
    )
    out = tmp_path / "out"
    res = run_cohort([manifest], H.oracle(), out, progress=False, **OPTS)
    assert res.n_failed == 0
    assert (out / "escape.parquet").is_file()
    assert not list(tmp_path.glob("escape*")) and not list(tmp_path.parent.glob("escape*"))


def test_bad_slides_are_recorded_and_the_rest_go_on(cohort_dir, tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    for p in cohort_dir.rglob("*.tif*"):
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "corrupt.svs").write_bytes(b"II*\x00garbage" * 100)
    rgb = np.full((64, 64, 3), 200, np.uint8)
    tifffile.imwrite(folder / "nompp.tif", rgb, photometric="rgb")
    res = run_cohort([folder], H.oracle(), tmp_path / "out", progress=False, **OPTS)
    rows = _stems(res.rows)
    status = {k: r["status"] for k, r in rows.items()}
    assert status == {"a": "ok", "b": "ok", "corrupt": "failed", "nompp": "failed"}
    assert "corrupt.svs" in rows["corrupt"]["error"]
    assert "mpp" in rows["nompp"]["error"]
    manifest = pd.read_csv(res.manifest)
    assert sorted(manifest["name"]) == sorted(r["name"] for r in res.rows)
    assert set(manifest["path"]) == {str((folder / f).resolve()) for f in
                                     ("a.tif", "b.tiff", "corrupt.svs", "nompp.tif")}  # fmt: skip
    summary = pd.read_csv(tmp_path / "out" / SUMMARY)
    assert sorted(summary["name"]) == sorted([rows["a"]["name"], rows["b"]["name"]])
    assert (summary["nuclei_per_mm2"] > 0).all()
    n = summary["n_nuclei"].to_numpy()
    assert (
        summary[[c for c in summary if c.startswith("n_") and c != "n_nuclei"]].sum(1) == n
    ).all()
    assert not list((tmp_path / "out").rglob("*.partial"))
    assert not list((tmp_path / "out").glob("*.parts")), "failed slides leave no parts"
    assert not list((tmp_path / "out").glob("*.lock"))


def test_serial_and_distributed_agree(cohort_dir, tmp_path):
    serial = run_cohort([cohort_dir], H.oracle(), tmp_path / "s", progress=False, **OPTS)
    dist = run_cohort(
        [cohort_dir], H.oracle(), tmp_path / "d", local_cluster=2, processes=False,
        progress=False, **OPTS,
    )  # fmt: skip
    assert serial.n_failed == dist.n_failed == 0
    for name in (r["name"] for r in serial.rows):
        a = gpd.read_parquet(tmp_path / "s" / f"{name}.parquet")
        b = gpd.read_parquet(tmp_path / "d" / f"{name}.parquet")
        pd.testing.assert_frame_equal(a.drop(columns="geometry"), b.drop(columns="geometry"))
        assert a.geometry.to_wkb().equals(b.geometry.to_wkb())
        ga = (tmp_path / "s" / f"{name}.geojson").read_bytes()
        assert ga == (tmp_path / "d" / f"{name}.geojson").read_bytes()
    cols = ["name", "n_nuclei"]
    ms = pd.read_csv(tmp_path / "s" / MANIFEST)[cols]
    md = pd.read_csv(tmp_path / "d" / MANIFEST)[cols]
    pd.testing.assert_frame_equal(ms.reset_index(drop=True), md.reset_index(drop=True))

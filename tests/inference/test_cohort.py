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
from wsi_stnuc.export.geoparquet import read_geoparquet_metadata
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


def _slides(root: Path, *names: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        H.synthetic_slide(root / name, size=(140, 120), seed=k + 3)
    return root


def test_a_slide_held_by_another_run_is_skipped_never_mixed(tmp_path):
    import json
    import socket

    slides = _slides(tmp_path / "slides", "a.tif", "b.tif")
    out = tmp_path / "out"
    jobs = collect_slides([slides])
    held = out / f"{jobs[0].name}.lock"
    out.mkdir()
    # a live holder: this very process (as a second run started while this one works)
    held.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    res = run_cohort([slides], H.oracle(), out, progress=False, **OPTS)
    status = {r["name"]: r["status"] for r in res.rows}
    assert status == {jobs[0].name: "locked", jobs[1].name: "ok"}
    assert res.n_locked == 1 and "held by pid" in res.rows[0]["error"]
    assert not (out / f"{jobs[0].name}.parquet").exists()
    assert list(pd.read_csv(res.manifest)["name"]) == [jobs[1].name]  # not the held one
    assert held.exists()  # still the holder's


def test_resume_is_keyed_on_slide_model_and_settings(tmp_path, caplog):
    slides = _slides(tmp_path / "slides", "a.tif")
    out = tmp_path / "out"
    first = run_cohort([slides], H.oracle(), out, progress=False, **OPTS)
    name = first.rows[0]["name"]
    calls = []

    def counting(images):
        calls.append(len(images))
        return H.oracle_forward(images)

    same = H.oracle(forward=counting)
    run_cohort([slides], same, out, resume=True, progress=False, **OPTS)
    assert calls == []  # same slide, model, settings: kept
    other = H.oracle(forward=counting)
    other.identity = {"name": "another-model"}
    run_cohort([slides], other, out, resume=True, progress=False, **OPTS)
    assert sum(calls) > 0 and "another model or other settings" in caplog.text
    meta = read_geoparquet_metadata(out / f"{name}.parquet")
    assert meta["model"]["name"] == "another-model"
    calls.clear()
    stat = (slides / "a.tif").stat()
    os.utime(slides / "a.tif", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    run_cohort([slides], other, out, resume=True, progress=False, **OPTS)
    assert sum(calls) > 0 and "slide file changed" in caplog.text


def test_names_do_not_depend_on_the_folder(tmp_path):
    slides = _slides(tmp_path / "slides", "a_b.tif", "a b.tif")
    out = tmp_path / "out"
    res = run_cohort([slides], H.oracle(), out, progress=False, **OPTS)
    names = {Path(r["path"]).name: r["name"] for r in res.rows}
    assert len(set(names.values())) == 2 and res.n_failed == 0
    # the second file alone, resumed: found finished under its own name, not the other's
    alone = run_cohort([slides / "a b.tif"], H.oracle(), out, resume=True, progress=False, **OPTS)
    assert alone.rows[0]["name"] == names["a b.tif"]
    manifest = pd.read_csv(out / MANIFEST)
    assert dict(zip(manifest["path"].map(lambda p: Path(p).name), manifest["name"],
                    strict=True)) == names  # fmt: skip


def test_manifest_and_summary_keep_earlier_slides(tmp_path):
    slides = _slides(tmp_path / "slides", "a.tif", "b.tif")
    out = tmp_path / "out"
    run_cohort([slides / "a.tif"], H.oracle(), out, progress=False, **OPTS)
    run_cohort([slides / "b.tif"], H.oracle(), out, progress=False, **OPTS)
    run_cohort([slides / "b.tif"], H.oracle(), out, progress=False, **OPTS)  # replaces its row
    manifest = pd.read_csv(out / MANIFEST)
    assert sorted(Path(p).name for p in manifest["path"]) == ["a.tif", "b.tif"]
    assert (manifest["status"] == "ok").all()
    assert len(pd.read_csv(out / SUMMARY)) == 2


def test_mpp_fills_in_and_force_mpp_overrides(tmp_path):
    slides = _slides(tmp_path / "slides", "a.tif")  # states 0.5 µm/px
    out = tmp_path / "out"
    kept = run_cohort([slides], H.oracle(), out, mpp=0.25, progress=False, **OPTS)
    meta = read_geoparquet_metadata(kept.rows[0]["parquet"])
    assert meta["slide"]["mpp"] == [0.5, 0.5] and meta["slide"]["mpp_source"] == "file"
    forced = run_cohort([slides], H.oracle(), out, force_mpp=0.25, resume=True, progress=False,
                        **OPTS)  # fmt: skip
    meta = read_geoparquet_metadata(forced.rows[0]["parquet"])
    assert meta["slide"]["mpp"] == [0.25, 0.25] and meta["slide"]["mpp_source"] == "forced"
    assert meta["slide"]["native_mpp"] == [0.5, 0.5]
    assert pd.read_csv(out / MANIFEST)["mpp_source"].tolist() == ["forced"]


def test_a_failed_manifest_write_does_not_stop_the_cohort(tmp_path, monkeypatch):
    import errno

    from wsi_stnuc.inference import manifest as manifest_mod

    slides = _slides(tmp_path / "slides", "a.tif", "b.tif")
    out = tmp_path / "out"
    real, calls = manifest_mod._write_csv, []

    def full_disk_once(path, frame):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, frame)

    monkeypatch.setattr(manifest_mod, "_write_csv", full_disk_once)
    res = run_cohort([slides], H.oracle(), out, progress=False, **OPTS)
    assert res.n_failed == 0 and len(res.write_errors) == 1
    assert "manifest.csv" in res.write_errors[0] and "No space left" in res.write_errors[0]
    assert len(pd.read_csv(out / MANIFEST)) == 2  # the next write carried the first row too


def test_out_must_be_a_folder(tmp_path):
    slides = _slides(tmp_path / "slides", "a.tif")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        run_cohort([slides], H.oracle(), tmp_path / "file", progress=False, **OPTS)


def test_halo_too_small_for_the_largest_nucleus_is_refused_up_front(tmp_path):
    slides = _slides(tmp_path / "slides", "a.tif")
    with pytest.raises(InputError, match="--halo 8 is too small"):
        run_cohort([slides], H.oracle(), tmp_path / "out", progress=False,
                   **{**OPTS, "halo": 8})  # fmt: skip
    assert not list((tmp_path / "out").glob("*.parquet"))


def test_two_runs_on_one_folder_never_mix(tmp_path):
    """Two runs at once on the same --out with other batch sizes: each slide is written by
    one of them (the other skips it or redoes it after), never from both runs' batches."""
    import threading

    slides = _slides(tmp_path / "slides", "a.tif", "b.tif", "c.tif")
    ref = run_cohort([slides], H.oracle(), tmp_path / "ref", progress=False, **OPTS)
    out, results = tmp_path / "out", {}

    def run(batch_size: int) -> None:
        opts = {**OPTS, "batch_size": batch_size}
        results[batch_size] = run_cohort([slides], H.oracle(), out, progress=False, **opts)

    threads = [threading.Thread(target=run, args=(b,)) for b in (1, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for res in results.values():
        assert {r["status"] for r in res.rows} <= {"ok", "locked"}
    for row in ref.rows:
        a = gpd.read_parquet(row["parquet"])
        b = gpd.read_parquet(out / f"{row['name']}.parquet")
        pd.testing.assert_frame_equal(a.drop(columns="geometry"), b.drop(columns="geometry"))
    manifest = pd.read_csv(out / MANIFEST)
    assert sorted(manifest["name"]) == sorted(r["name"] for r in ref.rows)
    assert (manifest["status"] == "ok").all()
    assert not list(out.glob("*.lock")) and not list(out.glob("*.parts"))

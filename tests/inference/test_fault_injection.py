"""Kill a cohort run at random moments, resume it, and get what an uninterrupted run gives.

Each run is a subprocess (``fault_run.py``) that sends itself SIGKILL at its K-th file-commit
event: no ``finally`` block, lock release or clean-up runs, as with ``kill -9`` or a power cut.
K is drawn from several seeds over every commit of a full run, plus the last few events (the
summary, manifest and cohort-summary writes); the resumed output must equal the reference,
every time, and nothing may be left behind (parts, locks, temporary files). The resume runs
in this process, with the runner's options.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from wsi_stnuc.formats import Cohort
from wsi_stnuc.inference.cohort import run_cohort

RUNNER = Path(__file__).with_name("fault_run.py")
SEEDS = (0, 1, 2)
# columns and keys that hold wall-clock times
TIMES = ("seconds", "finished")


def _load(name: str, file: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _helpers():
    return _load("_fault_test_helpers", "test_infer.py")


RUN_OPTIONS = _load("_fault_runner", "fault_run.py").OPTS


def _run(slides: Path, out: Path, kill_at: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), str(slides), str(out), str(kill_at)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def _snapshot(out: Path) -> dict:
    """Everything a user reads from ``out``, wall-clock times left out."""
    snap = {}
    manifest = pd.read_csv(out / Cohort.MANIFEST).drop(columns=list(TIMES))
    snap["manifest"] = manifest.to_dict("list")
    snap["summary"] = pd.read_csv(out / Cohort.SUMMARY).drop(columns="seconds").to_dict("list")
    for name in manifest["name"]:
        table = gpd.read_parquet(out / f"{name}.parquet")
        snap[f"{name}.parquet"] = (table.drop(columns="geometry").to_dict("list"),
                                   table.geometry.to_wkb().tolist())  # fmt: skip
        snap[f"{name}.geojson"] = (out / f"{name}.geojson").read_text()
        summary = json.loads((out / f"{name}.summary.json").read_text())
        summary.pop("seconds")
        snap[f"{name}.summary.json"] = summary
    # the folders differ by name only: paths inside the outputs are compared relative to them
    snap = json.loads(json.dumps(snap, default=repr).replace(str(out), "OUT"))
    leftovers = [p.name for p in out.iterdir()
                 if p.name.endswith((".parts", ".lock", ".partial", ".takeover"))]  # fmt: skip
    snap["leftovers"] = sorted(leftovers)
    return snap


@pytest.mark.slow
def test_killed_and_resumed_runs_equal_an_uninterrupted_one(tmp_path):
    H = _helpers()
    slides = tmp_path / "slides"
    slides.mkdir()
    H.synthetic_slide(slides / "a.tif", size=(140, 120), seed=1)
    H.synthetic_slide(slides / "b b.tif", size=(120, 150), seed=2)
    clean = _run(slides, tmp_path / "clean", 0)
    assert clean.returncode == 0, clean.stderr
    n_commits = int(clean.stdout.split("commits=")[1].split()[0])
    assert n_commits > 10  # parts, parquet, geojson, summaries, manifest
    reference = _snapshot(tmp_path / "clean")
    assert reference["leftovers"] == []
    n_events = 2 * n_commits
    kills = [int(np.random.default_rng(s).integers(1, n_events + 1)) for s in SEEDS]
    kills += [n_events - 3, n_events]  # during the last writes (manifest, cohort summary)
    for i, k in enumerate(kills):
        out = tmp_path / f"kill-{i}"
        killed = _run(slides, out, k)
        assert killed.returncode == -9, (k, killed.stdout, killed.stderr)
        # resumed here, in this process: the killed run's locks are stale to it
        resumed = run_cohort([slides], H.oracle(), out, **RUN_OPTIONS)
        assert resumed.n_failed == resumed.n_locked == 0 and not resumed.write_errors, k
        assert _snapshot(out) == reference, f"kill at event {k} of {n_events}"

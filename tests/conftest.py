"""Shared fixtures: the real-data folder (skipped where absent), small synthetic inputs, and
QuPath's own GeoJSON reader.

``qupath-geojson-check`` runs ``qupath.lib.io.PathIO.readObjects`` compiled from QuPath's
source (builds 0.5.1 and 0.6.0). It is found at ``<repo>/../shared/tools/qupath/`` or
``$WSI_STNUC_QUPATH_CHECK``; tests that need it skip where it is absent or where no Java is new
enough for a build.
"""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from wsi_stnuc.io_utils import shared_data_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``$WSI_STNUC_DATA`` or ``../shared/data``; tests that need it skip where it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set WSI_STNUC_DATA)")
    return path


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data file missing: {path}")
    return path


@pytest.fixture(scope="session")
def cmu_slide(data_dir: Path) -> Path:
    return require(data_dir / "slides" / "CMU-1-Small-Region.svs")


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests where no CUDA device is present (CI never has one)."""
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


REPO = Path(__file__).resolve().parents[1]
CHECK_ENV = "WSI_STNUC_QUPATH_CHECK"
BUILDS = ("0.5.1", "0.6.0")
# the JVM cannot load a build's classes: the Java found is older than the build needs
_TOO_OLD_JAVA = ("UnsupportedClassVersionError", "has been compiled by a more recent version")


def qupath_check() -> Path:
    """The reader command: ``$WSI_STNUC_QUPATH_CHECK`` or the shared tools folder."""
    env = os.environ.get(CHECK_ENV)
    if env:
        return Path(env)
    return REPO.parent / "shared" / "tools" / "qupath" / "qupath-geojson-check"


@pytest.fixture(scope="session")
def qupath_tools() -> Path:
    """The folder of QuPath's reader and its jars (qupath-core inside); skips where absent."""
    check = qupath_check()
    if not check.is_file():
        pytest.skip(f"QuPath's reader not found at {check} (set {CHECK_ENV})")
    return check.parent


def file_features(path: Path) -> list[dict]:
    """The features of a GeoJSON file we wrote (``.zip``: its one inner file)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read(zf.namelist()[0]))["features"]
    return json.loads(Path(path).read_text())["features"]


@dataclass(frozen=True)
class QuPathReader:
    """One build of QuPath's reader."""

    version: str

    def read(self, *paths: Path, dump: int = 0) -> list[dict]:
        """One summary per file (see the tool's README); skips where it cannot run."""
        check = qupath_check()
        if not check.is_file():
            pytest.skip(f"QuPath's reader not found at {check} (set {CHECK_ENV})")
        env = {**os.environ, "QUPATH_VERSION": self.version}
        env.setdefault("QUPATH_CHECK_JAVA_OPTS", "-Xmx2g")
        cmd = [str(check), "--hierarchy", "--dump", str(dump), *map(str, paths)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if res.returncode == 2 or any(s in res.stderr for s in _TOO_OLD_JAVA):
            pytest.skip(f"QuPath {self.version} reader cannot run here: {res.stderr.strip()[:300]}")
        lines = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
        assert len(lines) == len(paths), res.stderr[-3000:]
        return lines

    def read_whole(self, *paths: Path) -> list[dict]:
        """Read each file and check that every object arrived as the file describes it."""
        dumps = [len(file_features(p)) for p in paths]
        summaries = self.read(*paths, dump=max(dumps, default=0))
        for path, summary in zip(paths, summaries, strict=True):
            assert_read_whole(summary, file_features(path))
        return summaries


def assert_read_whole(summary: dict, features: list[dict]) -> None:
    """QuPath read every feature with its type, class and colour, its UUID, a valid ROI (and
    nucleus ROI) and every measurement (float32 for detections), and could add them all to a
    hierarchy."""
    assert summary["ok"], summary["error"]
    n = len(features)
    assert summary["n_objects"] == n
    assert summary["ids"] == {"kept_from_file": n, "regenerated": 0, "distinct": n,
                              "objects_sharing_an_id": 0}  # fmt: skip
    if n:
        assert summary["rois"]["all_non_null_and_valid"], summary["rois"]["invalid_examples"]
        assert summary["rois"]["empty"] == 0
        assert summary["cells"]["nucleus_rois"]["invalid"] == 0
    assert summary["hierarchy"]["after_add"]["n_objects"] == n
    got = {o["id"]: o for o in summary.get("objects_sample", [])}
    assert len(got) == n
    for feature in features:
        obj, props = got[feature["id"]], feature["properties"]
        assert obj["type"] == props.get("objectType", "annotation")
        assert obj["roi"]["valid"] and not obj["roi"]["empty"]
        if obj["type"] == "cell":
            assert obj["nucleus_roi"]["valid"] and not obj["nucleus_roi"]["empty"]
        cls = props.get("classification")
        if cls is None:
            assert obj["class"] is None
        else:
            assert obj["class"] == cls["name"]
            assert obj["class_color"] == "[{}, {}, {}]".format(*cls["color"])
        want = props.get("measurements", {})
        assert set(obj["measurements"]) == set(want)
        for name, value in want.items():
            np.testing.assert_allclose(obj["measurements"][name], value, rtol=1e-6, atol=1e-6)


@pytest.fixture(params=BUILDS, ids=[f"qupath-{v}" for v in BUILDS])
def qupath(request) -> QuPathReader:
    """QuPath's reader, once per build (0.5.1, 0.6.0)."""
    return QuPathReader(request.param)

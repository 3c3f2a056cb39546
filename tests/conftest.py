"""Shared fixtures: the real-data folder (skipped where absent), small synthetic inputs, and
QuPath's own GeoJSON reader.

``qupath-geojson-check`` runs ``qupath.lib.io.PathIO.readObjects`` compiled from QuPath's
source (builds 0.5.1 and 0.6.0). It is found at ``<repo>/../shared/tools/qupath/`` or
``$WSI_STNUC_QUPATH_CHECK``; tests that need it skip where it is absent or where no Java is new
enough for a build.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import re
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


# Groovy as QuPath bundles it: exactly the modules of QuPath 0.5.1 - 0.7.0's
# gradle/libs.versions.toml (Debian's groovy package has them; no groovy-json)
GROOVY_JARS = ("groovy-2.4.21.jar", "groovy-jsr223.jar", "groovy-xml.jar")
# qupath-core 0.5.1 runs on Java 17, but the reader's jar also holds its own log provider,
# compiled for Java 21, which slf4j finds on the class path: both builds need Java 21 here
JAVA_FOR_BUILD = {"0.5.1": 21, "0.6.0": 21}


def _java_major(java: str) -> int | None:
    try:
        res = subprocess.run([java, "-XshowSettings:properties", "-version"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    except OSError:
        return None
    match = re.search(r"java\.specification\.version = (\d+)", res.stderr)
    return int(match.group(1)) if match else None


@functools.lru_cache
def find_java(minimum: int) -> str | None:
    """A Java at least ``minimum`` (``$JAVA_HOME``, then ``/usr/lib/jvm``, then ``java``)."""
    home = os.environ.get("JAVA_HOME")
    candidates = [f"{home}/bin/java"] if home else []
    candidates += sorted(glob.glob("/usr/lib/jvm/*/bin/java"), reverse=True) + ["java"]
    for java in candidates:
        major = _java_major(java)
        if major is not None and major >= minimum:
            return java
    return None


def classpath(build: str, tools: Path) -> str:
    lib = Path(os.environ.get("WSI_STNUC_GROOVY_LIB", "/usr/share/groovy/lib"))
    jars = [lib / j for j in GROOVY_JARS]
    if not all(j.is_file() for j in jars):
        pytest.skip(f"Groovy jars {GROOVY_JARS} not in {lib} (apt-get install groovy)")
    core = tools / f"qupath-geojson-check-v{build}.jar"
    if not core.is_file():
        pytest.skip(f"qupath-core jar not found: {core}")
    return os.pathsep.join(map(str, [*jars, core]))


@pytest.fixture(params=sorted(JAVA_FOR_BUILD), ids=[f"qupath-{b}" for b in sorted(JAVA_FOR_BUILD)])
def groovy(request, qupath_tools):
    """Run Groovy 2.4 with exactly QuPath's Groovy modules and one build's qupath-core
    (Debian's ``/usr/share/groovy/lib`` or ``$WSI_STNUC_GROOVY_LIB``): ``groovy(main, *args)``."""
    build = request.param
    java = find_java(JAVA_FOR_BUILD[build])
    if java is None:
        pytest.skip(f"no Java >= {JAVA_FOR_BUILD[build]} for qupath-core {build}")
    cp = classpath(build, qupath_tools)

    def run(main: str, *args: str) -> subprocess.CompletedProcess:
        cmd = [java, "-Djava.awt.headless=true", "-cp", cp, main, *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600)

    return run

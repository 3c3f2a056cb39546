"""The cohort report: one row per slide, and in a real headless browser it renders and every
overview image loads (skipped where no Chromium is installed; ``.ci/run`` installs it)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_stnuc.inference.cohort import run_cohort
from wsi_stnuc.inference.report import REPORT, write_cohort_report


def _helpers():
    spec = importlib.util.spec_from_file_location("_t", Path(__file__).with_name("test_infer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


H = _helpers()
OPTS = {"core": 64, "halo": 24, "batch_size": 4, "tissue": False, "workers": 1}
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def _browser() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    slides = root / "slides"
    slides.mkdir()
    H.synthetic_slide(slides / "a.tif", size=(200, 170), seed=1)
    H.synthetic_slide(slides / "b.tif", size=(150, 210), seed=2)
    (slides / "broken.svs").write_bytes(b"II*\x00garbage" * 50)
    run_cohort([slides], H.oracle(), root / "out", progress=False, **OPTS)
    return root / "out"


def test_report_has_one_row_per_slide_with_counts_status_and_error(cohort):
    page = (cohort / REPORT).read_text(encoding="utf-8")
    rows = re.findall(r"<tr class=\"(ok|failed)\">", page)
    assert sorted(rows) == ["failed", "ok", "ok"]
    assert "broken.svs" in page  # the failed slide's error text
    for src in re.findall(r'<img class="overview" src="([^"]+)"', page):
        assert (cohort / src).is_file() and not Path(src).is_absolute()


def test_write_cohort_report_marks_missing_overviews(tmp_path):
    rows = [{"name": "<b>&", "status": "failed", "error": "bad <file>"},
            {"name": "x", "status": "ok", "error": "", "parquet": str(tmp_path / "x.parquet"),
             "n_nuclei": 10, "tissue_area_mm2": 0.5, "seconds": 1.0, "class_counts": {"a": 10}}]  # fmt: skip
    page = write_cohort_report(rows, tmp_path).read_text()
    assert "20 " in page or "20<" in page  # density 10 / 0.5 mm²
    assert 'src="x.overview.png"' in page
    assert "&lt;b&gt;&amp;" in page and "bad &lt;file&gt;" in page and "<b>&" not in page


def _run_browser(*args: str) -> subprocess.CompletedProcess:
    cmd = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--allow-file-access-from-files", "--virtual-time-budget=10000", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
@pytest.mark.skipif(_browser() is None, reason="no headless Chromium installed")
def test_report_renders_in_a_headless_browser_and_every_image_loads(cohort, tmp_path):
    url = (cohort / REPORT).resolve().as_uri()
    dom = _run_browser("--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-images="ok 2"' in dom.stdout  # the page's own check ran: 2 of 2 loaded
    assert dom.stdout.count('data-loaded="1"') == 2 and 'data-loaded="0"' not in dom.stdout
    shot = tmp_path / "shot.png"
    res = _run_browser(f"--screenshot={shot}", "--window-size=1400,900", url)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1400, 900) and np.asarray(im.convert("L")).std() > 10


@pytest.mark.slow
@pytest.mark.skipif(_browser() is None, reason="no headless Chromium installed")
def test_a_missing_overview_shows_as_broken_in_the_browser(cohort, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(cohort, copy)
    next(copy.glob("*.overview.png")).unlink()
    dom = _run_browser("--dump-dom", (copy / REPORT).resolve().as_uri())
    assert 'data-images="broken 1"' in dom.stdout

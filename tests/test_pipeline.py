"""The demo chain end to end on a small synthetic bundle (structure, not accuracy)."""

from __future__ import annotations

import json

import geopandas as gpd
import pytest
from click.testing import CliRunner

from wsi_stnuc.pipeline import DemoConfig, format_metrics, run_demo
from wsi_stnuc_cli.main import cli

SMALL = DemoConfig(width=1024, height=768, steps=4, patch=128, threads=1)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same small configuration run twice, in two folders."""
    root = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    first = run_demo(root / "a", SMALL, report=lines.append)
    second = run_demo(root / "b", SMALL, report=lambda _: None)
    return first, second, lines


@pytest.mark.slow
def test_same_seed_gives_the_same_figures(two_runs):
    first, second, _ = two_runs
    a, b = (json.loads(r.paths["metrics"].read_text()) for r in (first, second))
    assert json.dumps(a["metrics"], sort_keys=True) == json.dumps(b["metrics"], sort_keys=True)
    assert a["training"] == b["training"]
    assert a["training"]["steps"] == 4 and a["training"]["time_capped"] is False
    assert a["seed"] == 0 and a["training"]["threads"] == 1
    assert {"wsi_stnuc", "torch", "numpy"} <= set(a["versions"])


@pytest.mark.slow
def test_small_demo_runs_every_stage_and_draws_each(two_runs):
    from PIL import Image

    from wsi_stnuc.inference.overview import SIZE_PX as OVERVIEW
    from wsi_stnuc.st.qc_figures import SIZE_PX as LABELS_QC
    from wsi_stnuc.training.curves import DPI, FIGSIZE

    result, _, lines = two_runs
    config = SMALL
    assert any("SYNTHETIC" in line for line in lines)
    assert any("4 steps" in line for line in lines) and not any("WARNING" in x for x in lines)
    for key in ("slide", "labels", "labels_qupath", "dataset", "model", "nuclei", "metrics"):
        assert result.paths[key].exists(), key
    sizes = {"labels_qc": LABELS_QC, "train_curves": (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI),
             "overview": OVERVIEW}  # fmt: skip
    for key, size in sizes.items():
        assert result.paths[key].parent.exists()
        with Image.open(result.paths[key]) as im:
            assert im.format == "PNG" and im.size == size, key
    doc = json.loads(result.paths["metrics"].read_text())
    assert doc["synthetic"] is True
    for model in ("trained", "untrained"):
        assert {"pq", "dq", "sq", "f1d", "aji"} <= set(doc["metrics"][model])
    nuclei = gpd.read_parquet(result.paths["nuclei"])
    assert nuclei.geometry.is_valid.all()
    # everything predicted lies on the slide (level-0 pixel frame)
    minx, miny, maxx, maxy = nuclei.total_bounds if len(nuclei) else (0, 0, 0, 0)
    assert minx >= 0 and miny >= 0 and maxx <= config.width and maxy <= config.height
    geojson = json.loads(result.paths["nuclei_qupath"].read_text())
    assert geojson["type"] == "FeatureCollection"
    assert len(geojson["features"]) == len(nuclei)


def test_format_metrics_table_lists_models_and_classes():
    lines = format_metrics(
        {
            "trained": {
                "pq": 0.5,
                "dq": 0.6,
                "sq": 0.8,
                "aji": 0.4,
                "f1d": 0.7,
                "mpq": 0.3,
                "f1c": {"epithelial": 0.9},
            },
            "untrained": {
                "pq": 0.0,
                "dq": 0.0,
                "sq": float("nan"),
                "aji": 0.0,
                "f1d": 0.01,
                "mpq": 0.0,
                "f1c": {"epithelial": 0.0},
            },
        }
    )
    text = "\n".join(lines)
    assert "trained" in text and "untrained" in text and "F1c epithelial" in text
    assert "0.700" in text and "NaN" in text


def test_demo_command_help():
    result = CliRunner().invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0
    assert "SYNTHETIC" in result.output

"""The demo chain end to end on a small synthetic bundle (structure, not accuracy)."""

from __future__ import annotations

import json

import geopandas as gpd
import pytest
from click.testing import CliRunner

from wsi_stnuc.pipeline import DemoConfig, format_metrics, run_demo
from wsi_stnuc_cli.main import cli


@pytest.mark.slow
def test_small_demo_runs_every_stage(tmp_path):
    lines: list[str] = []
    config = DemoConfig(width=1024, height=768, epochs=2, max_train_minutes=0.2, patch=128)
    result = run_demo(tmp_path / "demo", config, report=lines.append)

    assert any("SYNTHETIC" in line for line in lines)
    for key in ("slide", "labels", "labels_qupath", "dataset", "model", "nuclei", "metrics"):
        assert result.paths[key].exists(), key
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

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from wsi_stnuc_cli.main import cli


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory):
    """A 1024 x 768 two-level pyramid: pink blob on white glass, 0.5 µm/px."""
    from wsi_stnuc.slide.write import write_pyramidal_tiff

    yy, xx = np.mgrid[0:768, 0:1024]
    img = np.full((768, 1024, 3), 240, np.uint8)
    img[(xx - 500) ** 2 + (yy - 380) ** 2 < 300**2] = (190, 100, 160)
    path = tmp_path_factory.mktemp("cli") / "s.tif"
    return write_pyramidal_tiff(path, img, 0.5, compression="zlib")


def test_info_text_and_json(small_slide):
    runner = CliRunner()
    res = runner.invoke(cli, ["info", str(small_slide)])
    assert res.exit_code == 0, res.output
    assert "1024 x 768" in res.output and "0.5000" in res.output and "tifffile" in res.output
    res = runner.invoke(
        cli, ["info", str(small_slide), "--json", "--backend", "openslide", "--mpp", "0.3"]
    )
    assert res.exit_code == 0, res.output
    facts = json.loads(res.output)
    assert facts["backend"] == "openslide" and facts["mpp"] == [0.3, 0.3]
    assert [lv["downsample"] for lv in facts["levels"]] == [1.0, 2.0]


def test_info_without_mpp(tmp_path):
    path = tmp_path / "n.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), tile=(32, 32), photometric="rgb")
    res = CliRunner().invoke(cli, ["info", str(path), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["mpp"] is None
    res = CliRunner().invoke(cli, ["tissue", str(path), "--out", str(tmp_path / "t.geojson")])
    assert res.exit_code == 2 and "pass --mpp" in res.output


def test_tissue_writes_geojson(small_slide, tmp_path):
    out = tmp_path / "tissue.geojson"
    res = CliRunner().invoke(
        cli, ["tissue", str(small_slide), "--out", str(out), "--thumb-mpp", "4"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert len(doc["features"]) == 1
    assert doc["features"][0]["properties"]["objectType"] == "annotation"
    assert "1 tissue region" in res.output


def test_convert_then_info(small_slide, tmp_path):
    out = tmp_path / "s.zarr"
    res = CliRunner().invoke(cli, ["convert", str(small_slide), str(out), "--chunk", "256"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["info", str(out), "--json"])
    facts = json.loads(res.output)
    assert facts["backend"] == "zarr" and facts["mpp"] == [0.5, 0.5]
    assert (facts["width"], facts["height"]) == (1024, 768)


def test_bad_input_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"\x00" * 100)
    res = CliRunner().invoke(cli, ["info", str(bad)])
    assert res.exit_code == 2
    assert "broken.svs" in res.output and "Traceback" not in res.output

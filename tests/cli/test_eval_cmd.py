"""``wsi-stnuc evaluate`` through click's CliRunner."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from wsi_stnuc_cli.main import cli


def _maps(tmp_path):
    ref = np.zeros((20, 20), np.int32)
    ref[2:8, 2:8] = 1
    ref[10:16, 10:16] = 2
    pred = ref.copy()
    pred[10:16, 10:16] = 0  # second nucleus missed
    ref_path, pred_path = tmp_path / "ref.npz", tmp_path / "pred.npz"
    np.savez(ref_path, inst=ref, inst_type=np.array([1, 2]))
    np.savez(pred_path, inst=pred, inst_type=np.array([1]))
    return pred_path, ref_path


def test_evaluate_prints_and_writes_json(tmp_path):
    pred, ref = _maps(tmp_path)
    out = tmp_path / "sub" / "metrics.json"
    res = CliRunner().invoke(
        cli, ["evaluate", str(pred), str(ref), "--mpp", "0.5", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "PQ" in res.output and "F1 detection" in res.output
    doc = json.loads(out.read_text())
    # TP 1 (IoU 1), FN 1: DQ = 1 / 1.5, SQ = 1
    assert doc["tp"] == 1 and doc["fn"] == 1 and doc["fp"] == 0
    assert doc["pq"] == doc["dq"] == 1 / 1.5
    assert doc["f1c"] == {"1": 1.0, "2": 0.0}
    assert doc["radius_um"] == 3.0 and doc["mode"] == "raster"
    assert not list(out.parent.glob("*.partial"))


def test_evaluate_without_mpp_is_a_clean_error(tmp_path):
    pred, ref = _maps(tmp_path)
    res = CliRunner().invoke(cli, ["evaluate", str(pred), str(ref)])
    assert res.exit_code == 2
    assert "pixel size unknown" in res.output and "Traceback" not in res.output


def test_evaluate_folders(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    for name in ("x", "y"):
        ref = np.zeros((16, 16), np.int32)
        ref[2:8, 2:8] = 1
        np.save(tmp_path / "r" / f"{name}.npy", ref)
        np.save(tmp_path / "p" / f"{name}.npy", ref if name == "x" else np.zeros_like(ref))
    out = tmp_path / "m.json"
    res = CliRunner().invoke(
        cli,
        ["evaluate", str(tmp_path / "p"), str(tmp_path / "r"), "--mpp", "0.25", "--json", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "x.npy" in res.output and "2 images" in res.output
    doc = json.loads(out.read_text())
    assert [row["pq"] for row in doc["images"]] == [1.0, 0.0]
    assert doc["summary"]["pq"] == 0.5 and doc["summary"]["fn"] == 1
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "p"), str(out)])
    assert res.exit_code != 0 and "both be files or both be folders" in res.output

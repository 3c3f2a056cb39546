"""Shipped models: fp16 weights that load into a float32 network, cards, name resolution."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from wsi_stnuc.classes import ClassTable
from wsi_stnuc.errors import InputError
from wsi_stnuc.model import zoo
from wsi_stnuc.model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from wsi_stnuc.model.net import NucleiNet

CLASSES = ClassTable.from_names(["epithelial", "inflammatory"])


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = NucleiNet(2, width=8, depth=2).eval()
    ckpt = save_checkpoint(tmp_path / "best.pt", model, classes=CLASSES, mpp=0.5,
                           extra={"optimizer": {"state": {}}})  # fmt: skip
    out = tmp_path / "models"
    monkeypatch.setattr(zoo, "SHIPPED_DIR", out)
    monkeypatch.setattr(zoo, "DEFAULT_MODEL", "tiny")
    path = zoo.ship_checkpoint(ckpt, "tiny", card={"summary": "a test model"},
                               scores={"pq": 0.5}, out_dir=out)  # fmt: skip
    return model, path


def test_shipped_weights_are_fp16_and_load_as_float32(shipped):
    model, path = shipped
    payload = read_checkpoint(path)
    floats = [v for v in payload["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert payload["extra"] == {}
    loaded, meta = load_checkpoint(path, device="cpu")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        a, b = model(x)["np"], loaded(x)["np"]
    assert torch.allclose(a, b, atol=5e-2) and not torch.equal(a, b)  # fp16-rounded weights
    assert meta["mpp"] == 0.5


def test_card_and_resolution(shipped):
    _, path = shipped
    assert zoo.shipped_models() == ["tiny"]
    card = zoo.model_card("tiny")
    assert card["classes"] == ["epithelial", "inflammatory"] and card["scores"] == {"pq": 0.5}
    assert card["summary"] == "a test model" and card["size_mb"] > 0
    assert zoo.resolve_model(None) == (path, "tiny")
    assert zoo.resolve_model("tiny") == (path, "tiny")
    assert zoo.resolve_model("other.pt") == (zoo.Path("other.pt"), None)
    with pytest.raises(InputError, match="no shipped model"):
        zoo.model_card("nope")


def test_no_default_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "SHIPPED_DIR", tmp_path)
    with pytest.raises(InputError, match="pass --model"):
        zoo.resolve_model(None)


def test_models_command(shipped):
    from wsi_stnuc_cli.main import cli

    res = CliRunner().invoke(cli, ["models"])
    assert res.exit_code == 0 and "tiny (default): a test model" in res.output
    res = CliRunner().invoke(cli, ["models", "--info", "tiny"])
    assert res.exit_code == 0 and json.loads(res.output)["name"] == "tiny"
    assert CliRunner().invoke(cli, ["models", "--info", "nope"]).exit_code == 2

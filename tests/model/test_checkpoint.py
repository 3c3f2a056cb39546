"""Checkpoint round trip and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_stnuc.classes import ClassTable
from wsi_stnuc.errors import InputError
from wsi_stnuc.model.checkpoint import load_checkpoint, save_checkpoint
from wsi_stnuc.model.net import NucleiNet, predict


def test_round_trip(tmp_path):
    torch.manual_seed(0)
    classes = ClassTable.from_names(["epithelial", "inflammatory"])
    model = NucleiNet(2, width=8, depth=2)
    path = save_checkpoint(
        tmp_path / "m.pt", model, classes=classes, mpp=0.5,
        train_config={"epochs": 3, "out": tmp_path}, metrics={"pq": np.float32(0.5)},
    )  # fmt: skip
    assert not (tmp_path / "m.pt.partial").exists()
    loaded, meta = load_checkpoint(path, device="cpu")
    assert meta["classes_table"] == classes
    assert meta["classes"] == classes.to_dict()
    assert meta["mpp"] == 0.5
    assert meta["arch"] == {"n_classes": 2, "width": 8, "depth": 2, "encoder": "unet"}
    assert meta["train_config"]["out"] == str(tmp_path)
    assert meta["metrics"]["pq"] == pytest.approx(0.5)
    assert meta["version"].startswith("0.")
    images = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    a, b = predict(model, images), predict(loaded, images)
    np.testing.assert_allclose(a["tp"], b["tp"], atol=1e-6)


def test_class_count_must_match(tmp_path):
    with pytest.raises(ValueError, match="classes"):
        save_checkpoint(tmp_path / "m.pt", NucleiNet(3, width=8, depth=2),
                        classes=ClassTable.from_names(["a"]), mpp=0.5)  # fmt: skip


def test_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(InputError, match="not a readable"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(InputError, match="not a wsi-stnuc"):
        load_checkpoint(foreign)


def test_mismatched_weights(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", NucleiNet(1, width=8, depth=2),
                           classes=ClassTable.from_names(["a"]), mpp=0.5)  # fmt: skip
    payload = torch.load(path, weights_only=True)
    payload["arch"]["width"] = 16
    torch.save(payload, path)
    with pytest.raises(InputError, match="does not match"):
        load_checkpoint(path)

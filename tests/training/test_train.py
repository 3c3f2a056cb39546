"""A tiny training run on discs-on-noise patches: the loss drops, checkpoints and resume work."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk

from wsi_stnuc.classes import ClassTable
from wsi_stnuc.errors import InputError
from wsi_stnuc.model.checkpoint import load_checkpoint
from wsi_stnuc.training.dataset import write_patch_dataset
from wsi_stnuc.training.targets import targets_from_instances
from wsi_stnuc.training.train import TrainConfig, lr_factor, train_model

CLASSES = ClassTable.from_names(["dark", "light"])


def disc_patch(rng, size=32, n=3):
    """Noise with ``n`` discs; class 1 dark, class 2 lighter; one in five 'unknown' (255)."""
    image = rng.normal(215, 12, (size, size, 3))
    inst = np.zeros((size, size), np.int32)
    classes = {}
    for k in range(1, n + 1):
        r = rng.uniform(3.5, 5.5)
        cy, cx = rng.uniform(r, size - r, 2)
        rr, cc = disk((cy, cx), r, shape=inst.shape)
        free = inst[rr, cc] == 0
        inst[rr[free], cc[free]] = k
        c = int(rng.integers(1, 3))
        image[rr[free], cc[free]] = (70, 30, 110) if c == 1 else (150, 100, 170)
        classes[k] = 255 if rng.random() < 0.2 else c
    return np.clip(image, 0, 255).astype(np.uint8), targets_from_instances(inst, classes)


@pytest.fixture()
def tiny_dataset(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for i in range(12):
        image, t = disc_patch(rng)
        records.append({"image": image, "targets": t, "source": f"img{i % 4}",
                        "split": "val" if i % 4 == 3 else "train"})  # fmt: skip
    return write_patch_dataset(tmp_path / "tiny.zarr", records, CLASSES, mpp=0.5)


def test_lr_schedule():
    assert lr_factor(0.0, 0.1) == pytest.approx(0.01)
    assert lr_factor(0.1, 0.1) == pytest.approx(1.0)
    assert lr_factor(1.0, 0.1) == pytest.approx(0.01)
    assert lr_factor(0.3, 0.1) > lr_factor(0.6, 0.1)


def test_tiny_training_run_and_resume(tiny_dataset, tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=3, batch_size=3, lr=1e-2, width=8, depth=2, patience=10, seed=0,
                      augment=True, device="cpu", threads=1, val_every=1)  # fmt: skip
    best = train_model(tiny_dataset, tmp_path / "run", cfg, progress=False)
    assert best.name == "best.pt" and (tmp_path / "run" / "last.pt").exists()
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    assert list(log["epoch"]) == [1, 2, 3]
    assert log["train_total"].iloc[-1] < 0.8 * log["train_total"].iloc[0]
    assert {"val_pq", "val_dq", "val_sq", "val_loss", "val_cls_acc"} <= set(log.columns)
    model, meta = load_checkpoint(best, device="cpu")
    assert meta["classes_table"] == CLASSES and meta["mpp"] == 0.5
    assert meta["train_config"]["width"] == 8 and meta["arch"]["depth"] == 2
    assert "pq" in meta["metrics"]
    with pytest.raises(InputError, match="optimizer"):  # best.pt carries no resume state
        train_model(tiny_dataset, tmp_path / "r2", cfg, resume=best, progress=False)

    # A run killed during epoch 2 and resumed from last.pt equals the uninterrupted run.
    import wsi_stnuc.training.train as train_mod

    real_evaluate, calls = train_mod.evaluate, []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        train_model(tiny_dataset, tmp_path / "killed", cfg, progress=False)
    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)
    train_model(tiny_dataset, tmp_path / "killed", cfg, resume=tmp_path / "killed" / "last.pt",
                progress=False)  # fmt: skip
    resumed = pd.read_csv(tmp_path / "killed" / "log.csv")
    assert list(resumed["epoch"]) == [1, 2, 3]
    np.testing.assert_allclose(resumed["train_total"], log["train_total"], rtol=1e-5)
    np.testing.assert_allclose(resumed["val_loss"], log["val_loss"], rtol=1e-5)


def test_device_dependent_defaults_are_resolved_into_the_checkpoint(tiny_dataset, tmp_path):
    cfg = TrainConfig(epochs=1, depth=2, device="cpu", threads=1)
    assert cfg.width is None and cfg.batch_size is None
    best = train_model(tiny_dataset, tmp_path / "d", cfg, progress=False)
    _, meta = load_checkpoint(best, device="cpu")
    assert meta["arch"]["width"] == 8
    assert meta["train_config"]["batch_size"] == 4


def test_step_budget_stops_mid_epoch_and_spans_the_schedule(tiny_dataset, tmp_path):
    # 9 training patches at batch 2 = 5 steps per epoch: 7 steps end inside epoch 2.
    cfg = TrainConfig(epochs=1, max_steps=7, batch_size=2, width=8, depth=2, device="cpu",
                      threads=1, augment_preset="light")  # fmt: skip
    train_model(tiny_dataset, tmp_path / "s", cfg, progress=False)
    log = pd.read_csv(tmp_path / "s" / "log.csv")
    assert list(log["step"]) == [5, 7]
    expected = cfg.lr * lr_factor(6 / 7, cfg.warmup_fraction)
    assert log["lr"].iloc[-1] == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        train_model(tiny_dataset, tmp_path / "x", TrainConfig(augment_preset="wild"),
                    progress=False)  # fmt: skip


def test_val_steps_sets_how_often_to_validate(tiny_dataset, tmp_path):
    # 9 training patches at batch 3 = 3 steps per epoch: every 6 steps = every 2nd epoch
    cfg = TrainConfig(epochs=5, batch_size=3, width=8, depth=2, device="cpu", threads=1,
                      val_steps=6)  # fmt: skip
    train_model(tiny_dataset, tmp_path / "v", cfg, progress=False)
    log = pd.read_csv(tmp_path / "v" / "log.csv")
    assert list(log.loc[log["val_pq"].notna(), "epoch"]) == [2, 4, 5]


def test_log_lines_run_record_and_curves(tiny_dataset, tmp_path, caplog, capsys):
    import json
    import logging

    from PIL import Image

    from wsi_stnuc.training.curves import DPI, FIGSIZE

    # 9 training patches at batch 3 = 3 steps per epoch; validate every 2nd epoch (and last).
    cfg = TrainConfig(epochs=3, batch_size=3, width=8, depth=2, device="cpu", threads=1,
                      val_every=2, seed=5)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="wsi_stnuc.training.train"):
        train_model(tiny_dataset, tmp_path / "l", cfg, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch")]
    assert len(lines) == 3 and not any("nan" in x.lower() for x in lines)
    assert "val PQ" not in lines[0] and "val PQ" in lines[1] and "val PQ" in lines[2]
    assert lines[0].startswith("epoch 1 (step 3): train loss ")
    assert "\r" not in capsys.readouterr().err  # captured stderr is no terminal: no bar
    record = json.loads((tmp_path / "l" / "run.json").read_text())
    assert record["steps"] == 9 and record["seed"] == 5 and record["stop"] == "epochs"
    assert record["time_capped"] is False and record["threads"] == 1
    assert {"wsi_stnuc", "torch", "numpy"} <= set(record["versions"])
    log = pd.read_csv(tmp_path / "l" / "log.csv")
    assert {"val_f1_dark", "val_f1_light"} <= set(log.columns)
    assert log["val_f1_dark"].dropna().between(0, 1).all()
    with Image.open(tmp_path / "l" / "curves.png") as im:
        assert im.format == "PNG" and im.size == (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI)
        assert np.asarray(im.convert("L")).std() > 10


def test_time_cap_stops_early_and_says_so(tiny_dataset, tmp_path, caplog):
    import json
    import logging

    cfg = TrainConfig(epochs=50, batch_size=3, width=8, depth=2, device="cpu", threads=1,
                      max_minutes=1e-6)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="wsi_stnuc.training.train"):
        train_model(tiny_dataset, tmp_path / "c", cfg, progress=False)
    record = json.loads((tmp_path / "c" / "run.json").read_text())
    assert record["time_capped"] is True and record["stop"] == "time_cap"
    assert record["steps"] == 1 < record["step_budget"]
    assert any("time cap" in r.getMessage() for r in caplog.records)

"""Augmentations keep image and targets consistent."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_stnuc.training.augment import (
    AugmentConfig,
    augment,
    colour_jitter,
    flip_rotate,
    hed_jitter,
    rescale,
)
from wsi_stnuc.training.targets import hv_maps, targets_from_instances


def sample(shape=(40, 48)):
    rng = np.random.default_rng(0)
    inst = np.zeros(shape, np.int32)
    inst[3:15, 4:20] = 1  # asymmetric shapes and positions
    inst[20:36, 25:33] = 2
    rr, cc = np.indices(shape)
    inst[np.hypot(rr - 10, cc - 36) < 6] = 3
    t = targets_from_instances(inst, {1: 1, 2: 2, 3: 255}, class_weight={2: 0.5})
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    image[inst > 0] //= 3
    return {"image": image, "inst": t.inst, "cls": t.cls, "hv": t.hv, "weight": t.weight,
            "cls_weight": t.cls_weight}  # fmt: skip


@pytest.mark.parametrize("hflip", [False, True])
@pytest.mark.parametrize("vflip", [False, True])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_flip_rotate_hv_equals_recomputed(hflip, vflip, k):
    s = sample()
    out = flip_rotate(s, hflip, vflip, k)
    np.testing.assert_allclose(out["hv"], hv_maps(out["inst"]), atol=1e-5)
    # Image and labels moved together: nucleus pixels are the darkened ones.
    assert np.array_equal(out["cls"], np.asarray([0, 1, 2, 255], np.uint8)[out["inst"]])
    assert np.array_equal(out["cls_weight"], np.asarray([1, 1, 0.5, 1], np.float32)[out["inst"]])
    dark = s["image"][s["inst"] > 0].mean()
    assert out["image"][out["inst"] > 0].mean() == pytest.approx(dark)
    assert out["image"].shape[:2] == out["inst"].shape
    assert s["hv"] is not out["hv"]


def test_rescale_keeps_size_and_consistency():
    s = sample()
    for factor in (0.8, 1.25):
        out = rescale(s, factor)
        assert out["image"].shape == s["image"].shape and out["inst"].shape == s["inst"].shape
        np.testing.assert_allclose(out["hv"], hv_maps(out["inst"]), atol=1e-6)
        area = (out["inst"] == 2).sum() / (s["inst"] == 2).sum()
        assert area == pytest.approx(factor**2, rel=0.2)
        assert set(np.unique(out["cls"][out["inst"] == 3])) == {255}
        assert set(np.unique(out["cls_weight"][out["inst"] == 2])) == {0.5}


def test_hed_identity_and_direction():
    image = sample()["image"]
    same = hed_jitter(image, np.ones(3), np.zeros(3))
    assert np.abs(same.astype(int) - image).max() <= 1
    darker = hed_jitter(image, np.array([1.5, 1.0, 1.0]), np.zeros(3))
    assert darker.astype(float).mean() < image.astype(float).mean()


def test_augment_random_is_consistent_and_seeded():
    s = sample()
    cfg = AugmentConfig(scale_prob=0.5, blur_prob=0.5, jpeg_prob=0.5)
    for seed in range(6):
        out = augment(s, np.random.default_rng(seed), cfg)
        np.testing.assert_allclose(out["hv"], hv_maps(out["inst"]), atol=1e-5)
        assert out["image"].dtype == np.uint8 and out["image"].shape[:2] == out["inst"].shape
    a = augment(s, np.random.default_rng(3), cfg)
    b = augment(s, np.random.default_rng(3), cfg)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(s["inst"], sample()["inst"])  # input untouched


def test_colour_jitter_identity_and_direction():
    image = sample()["image"]
    assert np.abs(colour_jitter(image, 1.0, 1.0, 1.0).astype(int) - image).max() <= 1
    grey = colour_jitter(image, 1.0, 1.0, 0.0).astype(int)
    assert np.abs(grey - grey[..., :1]).max() <= 1  # saturation 0: R = G = B
    assert colour_jitter(image, 0.8, 1.0, 1.0).mean() < image.mean()
    flat = colour_jitter(image, 1.0, 0.5, 1.0).astype(float)
    assert flat.std() < image.astype(float).std()


def test_presets_differ_in_colour_strength():
    light, strong = AugmentConfig.preset("light"), AugmentConfig.preset("strong")
    assert light.hed_log_range < strong.hed_log_range and light.colour_prob == 0
    s = sample()
    spread = {}
    for name, cfg in (("light", light), ("strong", strong)):
        cfg = AugmentConfig(**{**cfg.__dict__, "blur_prob": 0.0, "jpeg_prob": 0.0,
                               "scale_prob": 0.0, "flip_rot": False})  # fmt: skip
        means = [augment(s, np.random.default_rng(i), cfg)["image"].mean() for i in range(20)]
        spread[name] = np.std(means)
    assert spread["strong"] > 3 * spread["light"]

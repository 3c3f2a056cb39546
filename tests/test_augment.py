"""Augmentations keep image and targets consistent."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_stnuc.augment import AugmentConfig, augment, flip_rotate, hed_jitter, rescale
from wsi_stnuc.targets import hv_maps, targets_from_instances


def sample(shape=(40, 48)):
    rng = np.random.default_rng(0)
    inst = np.zeros(shape, np.int32)
    inst[3:15, 4:20] = 1  # asymmetric shapes and positions
    inst[20:36, 25:33] = 2
    rr, cc = np.indices(shape)
    inst[np.hypot(rr - 10, cc - 36) < 6] = 3
    t = targets_from_instances(inst, {1: 1, 2: 2, 3: 255})
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    image[inst > 0] //= 3
    return {"image": image, "inst": t.inst, "cls": t.cls, "hv": t.hv, "weight": t.weight}


@pytest.mark.parametrize("hflip", [False, True])
@pytest.mark.parametrize("vflip", [False, True])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_flip_rotate_hv_equals_recomputed(hflip, vflip, k):
    s = sample()
    out = flip_rotate(s, hflip, vflip, k)
    np.testing.assert_allclose(out["hv"], hv_maps(out["inst"]), atol=1e-5)
    # Image and labels moved together: nucleus pixels are the darkened ones.
    assert np.array_equal(out["cls"], np.asarray([0, 1, 2, 255], np.uint8)[out["inst"]])
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

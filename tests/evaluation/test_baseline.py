"""Classical baseline: synthetic nuclei of known number and size, and a real CoNSeP patch."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_stnuc.evaluation.baseline import classical_instances, classical_nucleus_table
from wsi_stnuc.evaluation.metrics import panoptic_quality
from wsi_stnuc.stain import RUIFROK_HED, od_to_rgb


def _synthetic_tile(mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Pink background (eosin) with hematoxylin discs of radius 3 µm: 3 isolated, 2 touching."""
    size = int(round(60 / mpp))
    yy, xx = np.mgrid[0:size, 0:size] * mpp  # µm
    centres = [(10, 10), (45, 12), (12, 45), (35, 40), (40.5, 40)]  # the last two touch
    truth = np.zeros((size, size), np.int32)
    h = np.zeros((size, size))
    for k, (cx, cy) in enumerate(centres, start=1):
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= 3.0**2
        truth[disc & (truth == 0)] = k
        h[disc] = 0.6
    od = h[..., None] * RUIFROK_HED[0] + 0.15 * RUIFROK_HED[1]
    rng = np.random.default_rng(0)
    od = od + rng.normal(0, 0.01, od.shape)
    return od_to_rgb(np.clip(od, 0, None)), truth


@pytest.mark.parametrize("mpp", [0.25, 0.5])
def test_finds_and_splits_synthetic_nuclei(mpp):
    rgb, truth = _synthetic_tile(mpp)
    inst = classical_instances(rgb, mpp)
    assert inst.dtype == np.int32
    assert inst.max() == 5  # the touching pair is split by the watershed
    r = panoptic_quality(truth, inst)
    assert r["tp"] == 5 and r["sq"] > 0.75


def test_nucleus_table_in_level0_frame():
    rgb, _ = _synthetic_tile(0.5)
    table = classical_nucleus_table(rgb, 0.5, x0=1000.0, y0=2000.0)
    assert len(table) == 5
    # disc centre x: µm / 0.5 µm/px, + 0.5 (pixels sampled at their corner), + the offset;
    # the two touching discs lose a sliver to each other, hence 1 px of slack
    cx = sorted(table["centroid_x"].tolist())
    assert cx == pytest.approx([1020.5, 1024.5, 1070.5, 1081.5, 1090.5], abs=1.0)
    # radius 3 µm -> area ~ 28 µm^2
    assert table["area_um2"].between(20, 36).all()
    assert (table["mean_hematoxylin_od"] > 0.4).all()


def test_blank_tile_and_bad_input():
    white = np.full((64, 64, 3), 255, np.uint8)
    assert classical_instances(white, 0.25).max() == 0
    pink = np.full((64, 64, 3), (230, 160, 200), np.uint8)
    assert classical_instances(pink, 0.25).max() == 0
    with pytest.raises(ValueError):
        classical_instances(white, 0.0)
    with pytest.raises(ValueError):
        classical_instances(white[..., 0], 0.25)


def test_size_filter_in_um2():
    rgb, _ = _synthetic_tile(0.25)
    # discs are pi * 9 = 28 µm^2: a 40 µm^2 minimum removes them all
    assert classical_instances(rgb, 0.25, min_area_um2=40.0).max() == 0


def require(path):
    if not path.exists():
        pytest.skip(f"real data file missing: {path}")
    return path


@pytest.mark.realdata
def test_real_consep_patch_is_better_than_nothing(data_dir):
    from PIL import Image

    name = "train_1_000"
    img = require(data_dir / "nuclei" / "consep_train" / "images" / f"{name}.jpg")
    lab = require(data_dir / "nuclei" / "consep_train" / "labels" / f"{name}.npz")
    rgb = np.asarray(Image.open(img).convert("RGB"))
    truth = np.load(lab)["inst"].astype(np.int32)
    r = panoptic_quality(truth, classical_instances(rgb, 0.25))
    assert r["tp"] > 5 and r["pq"] > 0.1

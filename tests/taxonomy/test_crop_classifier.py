from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import torch

from wsi_stnuc.errors import InputError
from wsi_stnuc.taxonomy.crop_classifier import (
    cross_validate_crops,
    image_confusion,
    spatial_block_ids,
    spatial_folds,
)
from wsi_stnuc.taxonomy.crops import ArrayReader


def test_blocks_are_per_slide_squares():
    pts = np.array([[10, 10], [90, 90], [110, 10], [10, 10]], float)
    ids = spatial_block_ids(pts, 100, slide_index=np.array([0, 0, 0, 1]))
    assert ids[0] == ids[1] != ids[2]
    assert ids[3] not in (ids[0], ids[2])  # same place, other slide: another block


def test_no_block_is_on_both_sides_of_a_split():
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 5000, (500, 2))
    blocks = spatial_block_ids(pts, 500)
    folds = spatial_folds(blocks, 5)
    tested = np.zeros(len(pts), int)
    for train, test in folds:
        assert not set(blocks[train]) & set(blocks[test])
        tested[test] += 1
    assert np.all(tested == 1)


def test_too_few_blocks_is_an_input_error():
    with pytest.raises(InputError, match="spatial blocks"):
        spatial_folds(np.array([0, 0, 1, 1]), 3)


def _synthetic_cells(n, rng):
    """Three types: 'small' dots, and 'big_a'/'big_b' drawn identically (the image cannot tell)."""
    types = rng.choice(["small", "big_a", "big_b"], n)
    yy, xx = np.mgrid[:16, :16]
    r2 = (yy - 7.5) ** 2 + (xx - 7.5) ** 2
    crops = np.full((n, 16, 16, 3), 235, np.float32)
    radius = np.where(types == "small", 2.5, 6.0)
    crops[r2[None] <= radius[:, None, None] ** 2] = (70, 40, 120)
    crops += rng.normal(0, 12, crops.shape)
    return np.clip(crops, 0, 255).astype(np.uint8), types


def test_cross_validation_separates_what_the_image_shows():
    rng = np.random.default_rng(0)
    crops, types = _synthetic_cells(240, rng)
    blocks = spatial_block_ids(rng.uniform(0, 3000, (240, 2)), 500)
    res = cross_validate_crops(crops, types, blocks, n_splits=3, epochs=4, seed=0)
    assert res.types == ["big_a", "big_b", "small"]
    assert np.all(res.fold >= 0)
    assert res.confusion.to_numpy().sum() == 240
    norm = res.confusion_normalised
    assert norm.loc["small", "small"] > 0.9
    # big_a and big_b are the same picture: their cells are not told apart
    assert norm.loc["big_a", ["big_a", "big_b"]].sum() > 0.9
    assert res.f1["small"] > 0.9 > max(res.f1["big_a"], res.f1["big_b"])


def test_image_confusion_reads_crops_from_labelsets():
    rng = np.random.default_rng(2)
    crops, types = _synthetic_cells(120, rng)
    # paste the crops on a grid of a synthetic slide at 0.5 µm/px
    slide = np.full((12 * 16, 10 * 32, 3), 235, np.uint8)
    centres = []
    for k in range(120):
        r, c = divmod(k, 10)
        y, x = r * 16, c * 32
        slide[y : y + 16, x : x + 16] = crops[k]
        centres.append((x + 8, y + 8))
    centres = np.array(centres, float)
    labels = gpd.GeoDataFrame(
        {"cell_type": types, "weight": np.ones(120)},
        geometry=shapely.buffer(shapely.points(centres), 3),
    )
    # Copy-on-write pandas (the default from pandas 3) hands out read-only arrays.
    with pd.option_context("mode.copy_on_write", True):
        res = image_confusion(
            [(labels, ArrayReader(slide, 0.5))], mpp=0.5, size=16, block_um=40, n_splits=3,
            epochs=4,
        )  # fmt: skip
    assert res.confusion.to_numpy().sum() == 120
    assert res.confusion_normalised.loc["small", "small"] > 0.8


def test_encoder_features_of_a_checkpoint_feed_the_same_cv(tmp_path):
    from wsi_stnuc.classes import ClassTable
    from wsi_stnuc.model.checkpoint import save_checkpoint
    from wsi_stnuc.model.net import NucleiNet
    from wsi_stnuc.taxonomy.crop_classifier import cross_validate_features, encoder_features

    torch.manual_seed(0)
    ckpt = save_checkpoint(
        tmp_path / "model.pt",
        NucleiNet(2, width=8),
        classes=ClassTable.from_names(["a", "b"]),
        mpp=0.5,
    )
    rng = np.random.default_rng(3)
    crops, types = _synthetic_cells(150, rng)
    features = encoder_features(ckpt, crops)
    assert features.shape[0] == 150 and features.shape[1] > 8
    blocks = spatial_block_ids(rng.uniform(0, 3000, (150, 2)), 500)
    res = cross_validate_features(features, types, blocks, n_splits=3)
    assert res.confusion.to_numpy().sum() == 150
    # even random encoder weights see dot size; the two identical types stay confused
    assert res.confusion_normalised.loc["small", "small"] > 0.8
    assert res.f1["small"] > max(res.f1["big_a"], res.f1["big_b"])
    with pytest.raises(InputError, match="stride"):
        encoder_features(ckpt, crops[:, :15, :15])

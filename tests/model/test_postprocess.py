"""Post-processing on constructed heads: the HV maps split touching nuclei."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_stnuc.model.postprocess import heads_to_instances
from wsi_stnuc.training.targets import hv_maps


def touching_discs(shape=(48, 64), centres=((24, 22), (24, 40)), radius=10):
    """Two discs overlapping along a vertical line, split by nearest centre."""
    rr, cc = np.indices(shape)
    d = np.stack([np.hypot(rr - r, cc - c) for r, c in centres])
    inst = np.where(d.min(0) <= radius, d.argmin(0) + 1, 0).astype(np.int32)
    return inst


def heads_from(inst, classes):
    k1 = max(classes) + 1
    tp = np.zeros((k1, *inst.shape), np.float32)
    cls_map = np.asarray([0, *classes])[inst]
    for c in range(k1):
        tp[c] = 0.1 + 0.8 * (cls_map == c)
    tp /= tp.sum(0, keepdims=True)
    return (inst > 0).astype(np.float32), hv_maps(inst), tp


def test_two_touching_discs_are_separated():
    inst = touching_discs()
    np_prob, hv, tp = heads_from(inst, classes=[1, 2])
    pred, info = heads_to_instances(np_prob, hv, tp)
    assert pred.dtype == np.int32
    assert len(info) == 2 and pred.max() == 2
    # Each predicted nucleus lies (almost) entirely within one true nucleus, classes right.
    for label, cls_id in zip(info["label"], info["class_id"], strict=True):
        true = np.bincount(inst[pred == label], minlength=3)
        assert true.max() / true.sum() > 0.9
        assert cls_id == true.argmax()
    assert list(info.columns[:5]) == ["label", "class_id", "det_prob", "prob_1", "prob_2"]
    np.testing.assert_allclose(info[["prob_1", "prob_2"]].sum(axis=1), 1.0, atol=1e-6)
    assert info["det_prob"].eq(1.0).all()
    # Centroids in model px, pixel-corner convention: x = mean column + 0.5.
    order = info.sort_values("centroid_x")
    assert order["centroid_x"].iloc[0] < 31 < order["centroid_x"].iloc[1]
    assert order["centroid_y"].to_numpy() == pytest.approx(24.5, abs=0.6)


def test_without_hv_the_discs_merge():
    inst = touching_discs()
    np_prob, hv, tp = heads_from(inst, classes=[1, 1])
    pred, info = heads_to_instances(np_prob, np.zeros_like(hv), tp)
    assert len(info) == 1


def test_small_objects_removed_and_empty_input():
    inst = np.zeros((32, 32), np.int32)
    inst[5:8, 5:8] = 1  # 9 px < min_area_px
    inst[15:27, 15:27] = 2
    np_prob, hv, tp = heads_from(inst, classes=[1, 1])
    pred, info = heads_to_instances(np_prob, hv, tp, min_area_px=10)
    assert len(info) == 1 and pred[6, 6] == 0 and pred[20, 20] == 1
    pred, info = heads_to_instances(np.zeros((8, 8)), np.zeros((2, 8, 8)), None)
    assert pred.max() == 0 and len(info) == 0 and "label" in info.columns


def test_mismatched_heads_rejected():
    with pytest.raises(ValueError, match="disagree"):
        heads_to_instances(np.zeros((8, 8)), np.zeros((2, 8, 9)), None)


@pytest.mark.realdata
def test_oracle_heads_recover_real_consep_nuclei(data_dir):
    """Heads made from real manual labels (touching nuclei included) give the labels back."""
    from wsi_stnuc.evaluation.metrics import panoptic_quality
    from wsi_stnuc.training.targets import targets_from_instances

    path = data_dir / "nuclei" / "consep_train" / "labels" / "train_1_005.npz"
    if not path.exists():
        pytest.skip(f"real data file missing: {path}")
    lab = np.load(path)
    inst = lab["inst"].astype(np.int32)
    t = targets_from_instances(inst, {i + 1: int(c) for i, c in enumerate(lab["inst_type"])})
    k1 = int(lab["inst_type"].max()) + 1
    tp = np.stack([(t.cls == c).astype(np.float32) for c in range(k1)])
    pred, info = heads_to_instances((inst > 0).astype(np.float32), t.hv, tp)
    pq = panoptic_quality(inst, pred)
    assert pq["dq"] > 0.85 and pq["sq"] > 0.85
    assert len(info) == pytest.approx(len(np.unique(inst)) - 1, rel=0.15)

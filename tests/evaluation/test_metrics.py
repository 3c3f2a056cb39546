"""Metrics against small cases worked out by hand from the published definitions."""

from __future__ import annotations

import math

import geopandas as gpd
import numpy as np
import pytest
import shapely
from scipy.optimize import linear_sum_assignment

from wsi_stnuc.evaluation import metrics as M


def _two_maps() -> tuple[np.ndarray, np.ndarray]:
    """true: A = 4x4 square (16 px), B = 3x3 (9 px); pred: A' = 4x3 inside A (12 px), C = 2x2 alone.

    By hand: IoU(A, A') = 12/16 = 0.75 -> TP 1, FP 1 (C), FN 1 (B).
    """
    t = np.zeros((10, 10), np.int32)
    p = np.zeros((10, 10), np.int32)
    t[0:4, 0:4] = 1
    t[6:9, 6:9] = 2
    p[0:4, 0:3] = 5
    p[0:2, 8:10] = 3
    return t, p


def test_panoptic_quality_by_hand():
    t, p = _two_maps()
    r = M.panoptic_quality(t, p)
    # DQ = 1 / (1 + 0.5 + 0.5) = 0.5; SQ = 0.75; PQ = 0.375
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    assert r["dq"] == pytest.approx(0.5)
    assert r["sq"] == pytest.approx(0.75)
    assert r["pq"] == pytest.approx(0.375)


def test_pq_threshold_is_strict_and_identity_is_perfect():
    t = np.zeros((4, 4), np.int32)
    p = np.zeros((4, 4), np.int32)
    t[:, 0:2] = 1  # 8 px
    p[:, 1:3] = 1  # 8 px, overlap 4 -> IoU 4/12 = 1/3
    assert M.panoptic_quality(t, p)["tp"] == 0
    assert M.panoptic_quality(t, p, iou_threshold=0.3)["sq"] == pytest.approx(1 / 3)
    # IoU exactly 0.5 does not match (IoU > 0.5): 2 px of 4 inside a 4 px object of 2+2.
    t2 = np.zeros((1, 6), np.int32)
    p2 = np.zeros((1, 6), np.int32)
    t2[0, 0:4] = 1
    p2[0, 0:2] = 1
    assert M.panoptic_quality(t2, p2)["tp"] == 0
    full = M.panoptic_quality(t, t)
    assert full["pq"] == 1.0 and full["tp"] == 1


def test_pq_empty_maps():
    z = np.zeros((5, 5), np.int32)
    assert math.isnan(M.panoptic_quality(z, z)["pq"])
    one = z.copy()
    one[1:3, 1:3] = 7
    r = M.panoptic_quality(one, z)
    assert (r["pq"], r["fn"], r["fp"]) == (0.0, 1, 0)


def test_pq_low_threshold_is_one_to_one():
    # One true object split in two halves by the prediction: at IoU > 0.3 both halves qualify
    # (IoU 0.5 each) but only one may match.
    t = np.zeros((2, 4), np.int32)
    t[:, :] = 1
    p = np.zeros((2, 4), np.int32)
    p[:, 0:2] = 1
    p[:, 2:4] = 2
    r = M.panoptic_quality(t, p, iou_threshold=0.3)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)
    assert r["sq"] == pytest.approx(0.5)


def test_aji_and_dice_by_hand():
    t, p = _two_maps()
    # C = |A & A'| = 12; U = |A | A'| (16) + |B| (9, overlaps nothing) + |C| (4, unused) = 29
    assert M.aji(t, p) == pytest.approx(12 / 29)
    # Dice: |T| = 25, |P| = 16, |T & P| = 12 -> 24 / 41
    assert M.dice(t, p) == pytest.approx(24 / 41)


def test_aji_prediction_shared_by_two_true_objects():
    # Kumar's AJI lets one prediction serve two true nuclei: true 1 = cols 0-1, true 2 = cols
    # 2-3, pred 1 = cols 0-3 (one row). Each true: inter 2, union 4 -> C = 4, U = 8.
    t = np.array([[1, 1, 2, 2]], np.int32)
    p = np.array([[1, 1, 1, 1]], np.int32)
    assert M.aji(t, p) == pytest.approx(0.5)


def test_aji_plus_pairs_one_to_one():
    # Same merge as above: AJI+ pairs the prediction with one true nucleus only (tie: either):
    # C = 2, U = 4 (pair) + 2 (the other true nucleus) = 6.
    t = np.array([[1, 1, 2, 2]], np.int32)
    p = np.array([[1, 1, 1, 1]], np.int32)
    assert M.aji_plus(t, p) == pytest.approx(2 / 6)
    # maximises summed IoU: true 1 (4 px) vs preds a (3 px inside) and b (covers 1 px of true
    # 1 and all of true 2); pairs 1-a (IoU .75) and 2-b (IoU 2/3) beat 1-b.
    t = np.array([[1, 1, 1, 1, 2, 2]], np.int32)
    p = np.array([[5, 5, 5, 6, 6, 6]], np.int32)
    # C = 3 + 2, U = 4 + 3 -> 5 / 7
    assert M.aji_plus(t, p) == pytest.approx(5 / 7)
    t2, p2 = _two_maps()
    assert M.aji_plus(t2, p2) == pytest.approx(12 / 29)  # no shared predictions: AJI+ = AJI


def test_detection_f1_by_hand():
    true = np.array([[0.0, 0.0], [10.0, 0.0], [50.0, 50.0]])
    pred = np.array([[1.0, 0.0], [9.0, 0.0], [30.0, 30.0], [10.0, 2.0]])
    r = M.detection_f1(true, pred, radius_px=3.0)
    # true0-pred0 (1), true1-pred1 (1) or pred3 (2): the optimum takes pred1.
    assert (r["tp"], r["fp"], r["fn"]) == (2, 2, 1)
    assert r["f1"] == pytest.approx(4 / 7)
    assert r["precision"] == pytest.approx(0.5)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["pairs"].tolist() == [[0, 0], [1, 1]]


def test_detection_prefers_more_pairs_over_closest_pair():
    # Greedy nearest would pair true0 with pred1 (distance 0.5) and leave true1 alone;
    # the optimal one-to-one matching pairs both.
    true = np.array([[0.0, 0.0], [4.0, 0.0]])
    pred = np.array([[-2.0, 0.0], [0.5, 0.0]])
    r = M.detection_f1(true, pred, radius_px=4.0)
    assert r["tp"] == 2
    assert sorted(r["pairs"].tolist()) == [[0, 0], [1, 1]]


def test_detection_matches_dense_hungarian_on_random_points():
    rng = np.random.default_rng(3)
    for _ in range(5):
        true = rng.uniform(0, 60, (40, 2))
        pred = rng.uniform(0, 60, (35, 2))
        radius = 6.0
        r = M.detection_f1(true, pred, radius)
        d = np.linalg.norm(true[:, None] - pred[None], axis=2)
        # Reference: dense assignment with the same objective (unmatched = radius each side).
        n, m = d.shape
        big = np.full((n + m, m + n), 1e9)
        big[:n, :m] = np.where(d <= radius, d, 1e9)
        big[np.arange(n), m + np.arange(n)] = radius
        big[n + np.arange(m), np.arange(m)] = radius
        big[n:, m:] = 0.0
        ri, ci = linear_sum_assignment(big)
        ref = [(i, j) for i, j in zip(ri, ci, strict=True) if i < n and j < m]
        assert r["tp"] == len(ref)
        got = d[r["pairs"][:, 0], r["pairs"][:, 1]].sum()
        assert got == pytest.approx(sum(d[i, j] for i, j in ref))


def test_detection_coincident_points_and_empty():
    r = M.detection_f1(np.array([[5.0, 5.0]]), np.array([[5.0, 5.0]]), 1.0)
    assert r["tp"] == 1 and r["f1"] == 1.0
    r = M.detection_f1(np.zeros((0, 2)), np.array([[1.0, 1.0]]), 1.0)
    assert (r["tp"], r["fp"], r["f1"]) == (0, 1, 0.0)
    assert math.isnan(M.detection_f1(np.zeros((0, 2)), np.zeros((0, 2)), 1.0)["f1"])
    with pytest.raises(ValueError):
        M.detection_f1(np.zeros((1, 2)), np.zeros((1, 2)), 0.0)


def test_class_f1_hovernet_formula():
    # 4 pairs: (1,1), (1,2), (2,2), (2,1); unpaired true: [1]; unpaired pred: [2, 2]
    true_cls = np.array([1, 1, 2, 2, 1])
    pred_cls = np.array([1, 2, 2, 1, 2, 2])
    pairs = np.array([[0, 0], [1, 1], [2, 2], [3, 3]])
    r = M.class_f1(pairs, true_cls, pred_cls, classes=[1, 2])
    # class 1: TP 1, FP 1 (pair 4), FN 1 (pair 2), FP_d 0, FN_d 1 -> 2 / (2 + 2 + 2 + 0 + 1)
    assert r[1] == pytest.approx(2 / 7)
    # class 2: TP 1, FP 1 (pair 2), FN 1 (pair 4), FP_d 2, FN_d 0 -> 2 / (2 + 2 + 2 + 2)
    assert r[2] == pytest.approx(2 / 8)
    assert r["acc"] == pytest.approx(0.5)


def test_class_f1_ignores_unknown_reference():
    true_cls = np.array(["epi", "unknown"])
    pred_cls = np.array(["epi", "epi"])
    pairs = np.array([[0, 0], [1, 1]])
    r = M.class_f1(pairs, true_cls, pred_cls, classes=["epi"])
    assert r["epi"] == 1.0 and r["acc"] == 1.0


def test_instance_classes_and_centroids():
    inst = np.array([[1, 1, 0], [1, 2, 2]], np.int32)
    cls_map = np.array([[3, 3, 0], [4, 1, 1]])
    assert M.instance_classes(inst, cls_map).tolist() == [3, 1]
    assert M.instance_classes(inst, np.array([7, 8])).tolist() == [7, 8]
    xy = M.instance_centroids(inst)
    # instance 1 pixels (r,c): (0,0) (0,1) (1,0): centres x = (0.5+1.5+0.5)/3, y = (0.5+0.5+1.5)/3
    assert xy[0] == pytest.approx([2.5 / 3, 2.5 / 3])
    assert xy[1] == pytest.approx([2.0, 1.5])


def test_multiclass_pq_pannuke_and_conic():
    # Image 1: class 1 true A (16 px) vs pred A' (12 px, IoU .75); class 2 true B, no pred.
    # Image 2: class 1 nothing; class 2 true D predicted exactly (IoU 1).
    t1, p1 = _two_maps()
    p1[p1 == 3] = 0  # drop the FP for clarity
    ov1 = M.overlap_table(t1, p1)
    t2 = np.zeros((6, 6), np.int32)
    t2[1:4, 1:4] = 1
    ov2 = M.overlap_table(t2, t2.copy())
    r = M.multiclass_pq(
        [ov1, ov2],
        [np.array([1, 2]), np.array([2])],
        [np.array([1]), np.array([2])],
        classes=[1, 2],
    )
    # class 1: image 1 PQ = 1 * 0.75; image 2 has no class-1 truth (skipped) -> 0.75
    # class 2: image 1 PQ 0 (FN), image 2 PQ 1 -> 0.5;  mPQ = (0.75 + 0.5) / 2
    assert r["per_class"][1]["pq"] == pytest.approx(0.75)
    assert r["per_class"][2]["pq"] == pytest.approx(0.5)
    assert r["mpq"] == pytest.approx(0.625)
    # mPQ+: class 1 pooled TP 1 -> 0.75; class 2 pooled TP 1, FN 1, sum IoU 1 -> 1 / 1.5
    assert r["per_class"][2]["pq_plus"] == pytest.approx(1 / 1.5)
    assert r["mpq_plus"] == pytest.approx((0.75 + 1 / 1.5) / 2)


def test_multiclass_pq_images_matches_tables():
    t, p = _two_maps()
    cls_t = np.array([1, 2])
    cls_p = np.zeros_like(p)
    cls_p[p == 5] = 1
    cls_p[p == 3] = 2
    r = M.multiclass_pq_images([t, t], [p, t], [cls_t, cls_t], [cls_p, cls_t], classes=[1, 2])
    # class 1: image 1 TP (IoU .75) -> PQ .75, image 2 PQ 1 -> mean .875
    # class 2: image 1 FN + FP (C is class 2) -> 0, image 2 -> 1; mean .5
    assert r["per_class"][1]["pq"] == pytest.approx(0.875)
    assert r["per_class"][2]["pq"] == pytest.approx(0.5)
    # pooled class 2: TP 1, FP 1, FN 1, IoU 1 -> 1 / 2
    assert r["per_class"][2]["pq_plus"] == pytest.approx(0.5)


def test_evaluate_instances_bundle():
    t, p = _two_maps()
    r = M.evaluate_instances(t, p, np.array([1, 2]), np.ones_like(p), mpp=0.5, radius_um=1.0)
    # radius 2 px: A (2, 2) - A' (1.5, 2) pair; B (7.5, 7.5) and C (9, 1) stay apart.
    assert (r["tp_d"], r["fp_d"], r["fn_d"]) == (1, 1, 1)
    assert r["pq"] == pytest.approx(0.375)
    # class 1: TP 1, FP_d 1 (C is class 1) -> 2 / 3; class 2: FN_d 1 -> 0
    assert r["f1c"][1] == pytest.approx(2 / 3)
    assert r["f1c"][2] == 0.0
    with pytest.raises(ValueError):
        M.evaluate_instances(t, p, mpp=0.0)


def test_summarize_over_images():
    t, p = _two_maps()
    a = M.compare_instances(t, p, np.array([1, 2]), np.ones_like(p))
    b = M.compare_instances(t, t, np.array([1, 2]), np.array([1, 2]))
    r = M.summarize([a, b], mpp=[0.5, 0.5], radius_um=1.0)
    # PQ, AJI: means of the images' values; counts summed
    assert r["pq"] == pytest.approx((0.375 + 1.0) / 2)
    assert r["aji"] == pytest.approx((12 / 29 + 1.0) / 2)
    assert (r["tp"], r["fp"], r["fn"], r["n_images"]) == (3, 1, 1, 2)
    # detection pooled: image a TP 1 FP 1 FN 1, image b TP 2 -> 2*3 / (2*3 + 1 + 1)
    assert r["f1d"] == pytest.approx(6 / 8)
    # F_c pooled: class 1 pairs (1,1) x2, FP_d 1 -> 4 / 5; class 2: pair (2,2), FN_d 1 -> 2 / 3
    assert r["f1c"][1] == pytest.approx(4 / 5)
    assert r["f1c"][2] == pytest.approx(2 / 3)
    # mPQ+: class 1 pooled TP 2 (IoU .75 + 1), FP 1 -> 1.75 / 2.5; class 2 TP 1, FN 1 -> 1 / 1.5
    assert r["mpq_plus"] == pytest.approx((1.75 / 2.5 + 1 / 1.5) / 2)


def _boxes(coords) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(geometry=[shapely.box(*c) for c in coords])


def test_polygons_agree_with_raster():
    t, p = _two_maps()
    # Same objects as polygons (x0, y0, x1, y1 in pixel edges).
    tg = _boxes([(0, 0, 4, 4), (6, 6, 9, 9)])
    pg = _boxes([(0, 0, 3, 4), (8, 0, 10, 2)])
    tg["cls"] = ["a", "b"]
    pg["cls"] = ["a", "a"]
    rp = M.evaluate_polygons(tg, pg, mpp=0.5, radius_um=1.0, class_column="cls")
    rr = M.evaluate_instances(t, p, np.array([1, 2]), np.ones_like(p), mpp=0.5, radius_um=1.0)
    for key in ("pq", "dq", "sq", "aji", "dice", "f1d"):
        assert rp[key] == pytest.approx(rr[key]), key
    assert rp["f1c"]["a"] == pytest.approx(rr["f1c"][1])
    assert rp["f1c"]["b"] == pytest.approx(rr["f1c"][2])


def test_polygon_dice_with_overlapping_references():
    # Two hand-drawn references overlap (union 6 px^2); the prediction covers exactly the union.
    tg = _boxes([(0, 0, 2, 2), (1, 0, 3, 2)])
    pg = _boxes([(0, 0, 3, 2)])
    assert M.evaluate_polygons(tg, pg, mpp=1.0)["dice"] == pytest.approx(1.0)
    # a chain of three (union 8) plus a lone 1 px^2 box; prediction = the chain's union (8)
    tg = _boxes([(0, 0, 2, 2), (10, 10, 11, 11), (1, 0, 3, 2), (2, 0, 4, 2)])
    pg = _boxes([(0, 0, 4, 2)])
    assert M.evaluate_polygons(tg, pg, mpp=1.0)["dice"] == pytest.approx(16 / 17)
    # disjoint sets use the pair table: half of a 4 px^2 box predicted -> 2 * 2 / (4 + 2)
    half = M.evaluate_polygons(_boxes([(0, 0, 2, 2)]), _boxes([(0, 0, 1, 2)]), mpp=1.0)
    assert half["dice"] == pytest.approx(4 / 6)


def test_match_polygons_touching_and_overlapping_refs():
    tg = _boxes([(0, 0, 2, 2), (2, 0, 4, 2)])  # touch along x = 2
    pg = _boxes([(0, 0, 2, 2)])
    m = M.match_polygons(tg, pg)
    assert m["pairs"].tolist() == [[0, 0]]
    assert len(m["overlap"].inter) == 1  # the zero-area contact is not a pair
    # Two identical references both at IoU 1 with one prediction: still one match.
    m = M.match_polygons(_boxes([(0, 0, 2, 2), (0, 0, 2, 2)]), pg)
    assert len(m["pairs"]) == 1
    with pytest.raises(ValueError, match="class column"):
        M.evaluate_polygons(tg, pg, mpp=1.0, class_column="nope")

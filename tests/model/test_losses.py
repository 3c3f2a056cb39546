"""HoVer-Net losses: unknown (255) pixels get segmentation loss but no class loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_stnuc.classes import IGNORE_CLASS
from wsi_stnuc.model.losses import hovernet_loss


def setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {
        "np": torch.randn(2, 2, 16, 16, generator=g),
        "hv": torch.randn(2, 2, 16, 16, generator=g),
        "tp": torch.randn(2, 3, 16, 16, generator=g),
    }
    cls = torch.zeros(2, 16, 16, dtype=torch.long)
    cls[:, 2:7, 2:7] = 1
    cls[:, 9:14, 9:14] = IGNORE_CLASS
    hv = torch.zeros(2, 2, 16, 16)
    hv[:, 0, 2:7, 2:7] = torch.linspace(-1, 1, 5)
    return out, cls, hv, torch.ones(2, 16, 16)


def test_unknown_pixels_no_class_loss_but_segmentation_loss():
    out, cls, hv, w = setup()
    base = hovernet_loss(out, cls, hv, w)
    changed = {k: v.clone() for k, v in out.items()}
    changed["tp"][:, :, 9:14, 9:14] = torch.randn(2, 3, 5, 5) * 5  # class logits on unknown
    moved = hovernet_loss(changed, cls, hv, w)
    assert moved["tp_ce"] == pytest.approx(float(base["tp_ce"]))
    assert moved["tp_dice"] == pytest.approx(float(base["tp_dice"]))
    changed["np"][:, :, 9:14, 9:14] = torch.randn(2, 2, 5, 5) * 5  # nucleus logits there
    moved = hovernet_loss(changed, cls, hv, w)
    assert moved["np_ce"] != pytest.approx(float(base["np_ce"]))


def test_gradients_and_weights():
    out, cls, hv, w = setup()
    out = {k: v.requires_grad_() for k, v in out.items()}
    terms = hovernet_loss(out, cls, hv, w)
    terms["total"].backward()
    assert out["tp"].grad[:, :, 9:14, 9:14].abs().max() == 0
    assert out["tp"].grad[:, :, 2:7, 2:7].abs().max() > 0
    assert out["np"].grad[:, :, 9:14, 9:14].abs().max() > 0
    # Zero weight on a region removes it from every term.
    w0 = w.clone()
    w0[:, 2:7, 2:7] = 0
    a = hovernet_loss({k: v.detach() for k, v in out.items()}, cls, hv, w0)
    perfect = {k: v.detach().clone() for k, v in out.items()}
    perfect["hv"][:, :, 2:7, 2:7] = hv[:, :, 2:7, 2:7] + 3.0
    b = hovernet_loss(perfect, cls, hv, w0)
    assert a["hv_mse"] == pytest.approx(float(b["hv_mse"]))


def test_perfect_prediction_has_small_loss():
    _, cls, hv, w = setup()
    fg = (cls > 0).long()
    known = torch.where(cls == IGNORE_CLASS, torch.zeros_like(cls), cls)
    out = {
        "np": torch.nn.functional.one_hot(fg, 2).permute(0, 3, 1, 2).float() * 20,
        "hv": hv.clone(),
        "tp": torch.nn.functional.one_hot(known, 3).permute(0, 3, 1, 2).float() * 20,
    }
    terms = hovernet_loss(out, cls, hv, w)
    assert float(terms["total"]) < 0.05
    assert float(terms["hv_msge"]) == pytest.approx(0.0, abs=1e-9)


def test_class_weight_scales_class_terms_only():
    out, cls, hv, w = setup()
    cw = torch.ones_like(w)
    cw[:, 2:7, 2:7] = 0.0  # the one typed nucleus: type not trusted at all
    base = hovernet_loss(out, cls, hv, w, cls_weight=cw)
    changed = {k: v.clone() for k, v in out.items()}
    changed["tp"][:, :, 2:7, 2:7] = torch.randn(2, 3, 5, 5) * 5
    moved = hovernet_loss(changed, cls, hv, w, cls_weight=cw)
    assert moved["tp_ce"] == pytest.approx(float(base["tp_ce"]))
    changed["hv"][:, :, 2:7, 2:7] += 1.0  # but its outline still teaches
    moved = hovernet_loss(changed, cls, hv, w, cls_weight=cw)
    assert moved["hv_mse"] > base["hv_mse"]
    # only relative trust among nuclei counts: a uniform confidence on the nuclei (background
    # at 1) changes nothing, so the classes are not learnt at half strength
    half = torch.where(cls > 0, torch.full_like(w, 0.5), torch.ones_like(w))
    plain = hovernet_loss(out, cls, hv, w)
    for key in ("tp_ce", "tp_dice"):
        assert float(hovernet_loss(out, cls, hv, w, cls_weight=half)[key]) == pytest.approx(
            float(plain[key])
        )


def test_one_hot_soft_targets_equal_hard_targets():
    """A soft target that puts all of a nucleus on its class is the hard loss, the unknown
    nucleus (no probabilities) included."""
    out, cls, hv, w = setup()
    soft = torch.zeros(2, 2, 16, 16)
    soft[:, 0][cls == 1] = 1.0
    hard = hovernet_loss(out, cls, hv, w)
    as_soft = hovernet_loss(out, cls, hv, w, cls_soft=soft)
    for key in ("tp_ce", "tp_dice", "np_ce", "hv_mse"):
        assert float(as_soft[key]) == pytest.approx(float(hard[key]), rel=1e-5), key


def test_soft_targets_teach_the_distribution():
    """The class loss of a nucleus with target (0.7, 0.3) is lowest where the predicted class
    distribution is (0.7, 0.3); its unknown share lowers its weight against other nuclei, and a
    soft target replaces the hard class, so even an 'unknown' nucleus with probabilities
    learns."""
    _, cls, hv, w = setup()
    soft = torch.zeros(2, 2, 16, 16)
    soft[:, 0][cls == 1] = 0.7
    soft[:, 1][cls == 1] = 0.3
    soft[:, 1][cls == IGNORE_CLASS] = 0.5  # typed by probabilities though 'unknown'
    fg = (cls > 0).long()

    def loss_at(p1: float) -> float:
        tp = torch.zeros(2, 3, 16, 16)
        tp[:, 0] = torch.where(fg > 0, -20.0, 20.0)
        tp[:, 1], tp[:, 2] = torch.log(torch.tensor(p1)), torch.log(torch.tensor(1 - p1))
        out = {"np": torch.zeros(2, 2, 16, 16), "hv": hv.clone(), "tp": tp}
        return float(hovernet_loss(out, cls, hv, w, cls_soft=soft)["tp_ce"])

    grid = [0.3, 0.5, 0.6, 0.7, 0.8, 0.9]
    losses = [loss_at(p) for p in grid]
    # the unknown-but-typed nucleus pulls towards class 2, so the optimum sits below 0.7
    assert grid[int(np.argmin(losses))] in (0.5, 0.6)
    soft_only_first = soft.clone()
    soft_only_first[:, :, 9:14, 9:14] = 0.0
    tp = torch.zeros(2, 3, 16, 16)
    out = {"np": torch.zeros(2, 2, 16, 16), "hv": hv.clone(), "tp": tp.requires_grad_()}
    hovernet_loss(out, cls, hv, w, cls_soft=soft_only_first)["total"].backward()
    assert tp.grad[:, :, 9:14, 9:14].abs().max() == 0  # no probabilities: no class loss
    assert tp.grad[:, :, 2:7, 2:7].abs().max() > 0

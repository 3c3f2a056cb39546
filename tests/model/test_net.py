"""NucleiNet shapes, padding in predict, and the optional timm encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_stnuc.model.net import NucleiNet, predict


def test_forward_shapes_and_stride_check():
    torch.manual_seed(0)
    model = NucleiNet(n_classes=3, width=8, depth=3).eval()
    out = model(torch.rand(2, 3, 32, 48))
    assert out["np"].shape == (2, 2, 32, 48)
    assert out["hv"].shape == (2, 2, 32, 48)
    assert out["tp"].shape == (2, 4, 32, 48)
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.rand(1, 3, 30, 48))


@pytest.mark.parametrize("hw", [(37, 53), (16, 16), (5, 9)])
def test_predict_odd_sizes(hw):
    torch.manual_seed(0)
    model = NucleiNet(n_classes=2, width=8, depth=4)
    images = np.random.default_rng(0).integers(0, 256, (3, *hw, 3), dtype=np.uint8)
    out = predict(model, images, batch_size=2)
    assert out["np"].shape == (3, *hw)
    assert out["hv"].shape == (3, 2, *hw)
    assert out["tp"].shape == (3, 3, *hw)
    assert out["np"].dtype == np.float32
    assert np.all((out["np"] >= 0) & (out["np"] <= 1))
    np.testing.assert_allclose(out["tp"].sum(axis=1), 1.0, atol=1e-5)


def test_predict_batches_agree_and_input_checked():
    torch.manual_seed(0)
    model = NucleiNet(n_classes=1, width=8, depth=2)
    images = np.random.default_rng(1).integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    a = predict(model, images, batch_size=1)
    b = predict(model, images, batch_size=3)
    np.testing.assert_allclose(a["np"], b["np"], atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        predict(model, images.astype(np.float32))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown encoder"):
        NucleiNet(2, encoder="resnet")
    with pytest.raises(ValueError, match="at least one class"):
        NucleiNet(0)


def test_pretrained_path_loads_local_weights(tmp_path):
    torch.manual_seed(0)
    src = NucleiNet(2, width=8, depth=2)
    path = tmp_path / "enc.pt"
    torch.save({"state_dict": src.encoder.state_dict()}, path)
    torch.manual_seed(1)
    dst = NucleiNet(2, width=8, depth=2, pretrained_path=path)
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(v, dst.encoder.state_dict()[k])


def test_timm_encoder():
    pytest.importorskip("timm")
    model = NucleiNet(2, width=8, encoder="timm:resnet18").eval()
    out = predict(model, np.zeros((1, 40, 70, 3), np.uint8))
    assert out["tp"].shape == (1, 3, 40, 70)

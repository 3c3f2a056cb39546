"""Training augmentations applied consistently to an image and its targets.

A *sample* is a dict of numpy arrays: ``image`` (H x W x 3 uint8), ``inst`` (H x W int32),
``cls`` (H x W uint8), ``hv`` (2 x H x W float32: channel 0 horizontal, 1 vertical),
``weight`` and ``cls_weight`` (H x W float32). Geometric transforms move all of them; under a
flip or rotation the HV maps also change sign and/or swap channels (the horizontal map of a
rotated nucleus is its old vertical map). Photometric transforms touch the image only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from wsi_stnuc.stain import hed_to_rgb, rgb_to_hed
from wsi_stnuc.training.targets import hv_maps

# Per-pixel arrays that geometric transforms move together (``hv`` is transformed apart).
SPATIAL = ("image", "inst", "cls", "weight", "cls_weight")


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and strengths; set a probability to 0 to switch a transform off.

    The defaults are strong on colour on purpose: stain and scanner differences between labs
    are the largest domain shift in H&E. Measured: a model trained on CoNSeP with light
    jitter (:meth:`light`) found almost no nuclei on MoNuSeg (darker hematoxylin, about 1.7x
    CoNSeP's mean H optical density) until the test images were colour-matched, so the H and
    E concentrations are scaled log-uniformly over ``exp(±hed_log_range)`` (0.4: x0.67 to
    x1.49), followed by brightness / contrast / saturation jitter.
    """

    flip_rot: bool = True
    scale_prob: float = 0.3
    scale_range: tuple[float, float] = (0.85, 1.2)
    hed_prob: float = 0.9
    hed_log_range: float = 0.4
    hed_bias: float = 0.03
    colour_prob: float = 0.8
    brightness: float = 0.1
    contrast: float = 0.2
    saturation: float = 0.25
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    jpeg_prob: float = 0.2
    jpeg_quality: tuple[int, int] = (50, 95)

    @classmethod
    def light(cls) -> AugmentConfig:
        """The earlier light colour jitter (H/E/D scaled by at most ±5 %, no colour jitter)."""
        return cls(hed_prob=0.8, hed_log_range=0.05, hed_bias=0.02, colour_prob=0.0)

    @classmethod
    def preset(cls, name: str) -> AugmentConfig:
        """``"strong"`` (the defaults) or ``"light"``."""
        presets = {"strong": cls, "light": cls.light}
        if name not in presets:
            raise ValueError(f"unknown augmentation preset {name!r}; use one of {sorted(presets)}")
        return presets[name]()


def flip_rotate(sample: dict, hflip: bool, vflip: bool, k: int) -> dict:
    """Flip left-right / top-bottom, then rotate by ``k`` x 90° counter-clockwise
    (``np.rot90``), transforming the HV maps to match."""
    out = dict(sample)
    h, v = sample["hv"][0], sample["hv"][1]
    spatial = {key: sample[key] for key in SPATIAL if key in sample}
    if hflip:
        spatial = {key: a[:, ::-1] for key, a in spatial.items()}
        h, v = -h[:, ::-1], v[:, ::-1]
    if vflip:
        spatial = {key: a[::-1] for key, a in spatial.items()}
        h, v = h[::-1], -v[::-1]
    for _ in range(k % 4):
        # rot90: new column index = old row index, new row index = flipped old column index.
        spatial = {key: np.rot90(a) for key, a in spatial.items()}
        h, v = np.rot90(v), -np.rot90(h)
    out.update({key: np.ascontiguousarray(a) for key, a in spatial.items()})
    out["hv"] = np.ascontiguousarray(np.stack([h, v]).astype(np.float32, copy=False))
    return out


def _fit(a: np.ndarray, shape: tuple[int, int], fill) -> np.ndarray:
    """Centre-crop or pad (with ``fill``) the first two axes to ``shape``."""
    out = np.full((*shape, *a.shape[2:]), fill, a.dtype)
    src, dst = [], []
    for n_in, n_out in zip(a.shape[:2], shape, strict=True):
        if n_in >= n_out:
            s = (n_in - n_out) // 2
            src.append(slice(s, s + n_out))
            dst.append(slice(0, n_out))
        else:
            s = (n_out - n_in) // 2
            src.append(slice(0, n_in))
            dst.append(slice(s, s + n_in))
    out[tuple(dst)] = a[tuple(src)]
    return out


def rescale(sample: dict, factor: float) -> dict:
    """Zoom by ``factor`` about the centre, keeping the size (white / background padding);
    HV maps are recomputed from the zoomed instances (exact, since they are per-instance
    normalised)."""
    shape = sample["inst"].shape
    image = ndi.zoom(sample["image"], (factor, factor, 1), order=1, mode="nearest")
    labels = {key: ndi.zoom(sample[key], factor, order=0) for key in SPATIAL[1:] if key in sample}
    out = dict(sample)
    out["image"] = _fit(image, shape, 255)
    out["inst"] = _fit(labels["inst"], shape, 0)
    out["cls"] = _fit(labels["cls"], shape, 0)
    for key in ("weight", "cls_weight"):
        if key in labels:
            out[key] = _fit(labels[key], shape, 1.0)
    out["hv"] = hv_maps(out["inst"])
    return out


def hed_jitter(image: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Scale (``alpha``, 3) and shift (``beta``, 3; natural-log OD units) the H, E, D stain
    concentrations of a Ruifrok-Johnston deconvolution (:mod:`wsi_stnuc.stain`, log10 OD)."""
    conc = rgb_to_hed(image)
    conc = conc * alpha.astype(np.float32) + (beta / np.log(10.0)).astype(np.float32)
    return hed_to_rgb(conc)


def colour_jitter(
    image: np.ndarray, brightness: float, contrast: float, saturation: float
) -> np.ndarray:
    """Multiply brightness, stretch contrast about the mean and saturation about the grey
    level by the given factors (1 = unchanged)."""
    x = image.astype(np.float32)
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = grey[..., None] + saturation * (x - grey[..., None])
    x = x.mean() + contrast * (x - x.mean())
    return np.clip(x * brightness + 0.5, 0, 255).astype(np.uint8)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Compress and decompress as JPEG (scanner compression artefacts)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def augment(sample: dict, rng: np.random.Generator, config: AugmentConfig = AugmentConfig()):
    """One random augmentation of ``sample`` (a new dict; the input is not modified)."""
    if config.flip_rot:
        sample = flip_rotate(
            sample, bool(rng.integers(2)), bool(rng.integers(2)), int(rng.integers(4))
        )
    if rng.random() < config.scale_prob:
        sample = rescale(sample, float(rng.uniform(*config.scale_range)))
    image = sample["image"]
    if rng.random() < config.hed_prob:
        alpha = np.exp(rng.uniform(-config.hed_log_range, config.hed_log_range, 3))
        beta = rng.uniform(-config.hed_bias, config.hed_bias, 3)
        image = hed_jitter(image, alpha, beta)
    if rng.random() < config.colour_prob:
        strengths = (config.brightness, config.contrast, config.saturation)
        image = colour_jitter(image, *(1 + rng.uniform(-v, v) for v in strengths))
    if rng.random() < config.blur_prob:
        sigma = float(rng.uniform(*config.blur_sigma))
        image = ndi.gaussian_filter(image, (sigma, sigma, 0))
    if rng.random() < config.jpeg_prob:
        image = jpeg_roundtrip(image, int(rng.integers(*config.jpeg_quality, endpoint=True)))
    return {**sample, "image": np.ascontiguousarray(image)}

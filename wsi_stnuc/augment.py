"""Training augmentations applied consistently to an image and its targets.

A *sample* is a dict of numpy arrays: ``image`` (H x W x 3 uint8), ``inst`` (H x W int32),
``cls`` (H x W uint8), ``hv`` (2 x H x W float32: channel 0 horizontal, 1 vertical),
``weight`` (H x W float32). Geometric transforms move all of them; under a flip or rotation
the HV maps also change sign and/or swap channels (the horizontal map of a rotated nucleus is
its old vertical map). Photometric transforms touch the image only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from wsi_stnuc.stain import hed_to_rgb, rgb_to_hed
from wsi_stnuc.targets import hv_maps


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and strengths; set a probability to 0 to switch a transform off."""

    flip_rot: bool = True
    scale_prob: float = 0.3
    scale_range: tuple[float, float] = (0.85, 1.2)
    hed_prob: float = 0.8
    hed_sigma: float = 0.05
    hed_bias: float = 0.02
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    jpeg_prob: float = 0.2
    jpeg_quality: tuple[int, int] = (50, 95)


def flip_rotate(sample: dict, hflip: bool, vflip: bool, k: int) -> dict:
    """Flip left-right / top-bottom, then rotate by ``k`` x 90° counter-clockwise
    (``np.rot90``), transforming the HV maps to match."""
    out = dict(sample)
    h, v = sample["hv"][0], sample["hv"][1]
    spatial = {key: sample[key] for key in ("image", "inst", "cls", "weight")}
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
    labels = {key: ndi.zoom(sample[key], factor, order=0) for key in ("inst", "cls", "weight")}
    out = dict(sample)
    out["image"] = _fit(image, shape, 255)
    out["inst"] = _fit(labels["inst"], shape, 0)
    out["cls"] = _fit(labels["cls"], shape, 0)
    out["weight"] = _fit(labels["weight"], shape, 1.0)
    out["hv"] = hv_maps(out["inst"])
    return out


def hed_jitter(image: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Scale (``alpha``, 3) and shift (``beta``, 3; natural-log OD units) the H, E, D stain
    concentrations of a Ruifrok-Johnston deconvolution (:mod:`wsi_stnuc.stain`, log10 OD)."""
    conc = rgb_to_hed(image)
    conc = conc * alpha.astype(np.float32) + (beta / np.log(10.0)).astype(np.float32)
    return hed_to_rgb(conc)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Compress and decompress as JPEG (scanner compression artefacts)."""
    import imagecodecs

    return imagecodecs.jpeg_decode(imagecodecs.jpeg_encode(image, level=int(quality)))


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
        alpha = rng.uniform(1 - config.hed_sigma, 1 + config.hed_sigma, 3)
        beta = rng.uniform(-config.hed_bias, config.hed_bias, 3)
        image = hed_jitter(image, alpha, beta)
    if rng.random() < config.blur_prob:
        sigma = float(rng.uniform(*config.blur_sigma))
        image = ndi.gaussian_filter(image, (sigma, sigma, 0))
    if rng.random() < config.jpeg_prob:
        image = jpeg_roundtrip(image, int(rng.integers(*config.jpeg_quality, endpoint=True)))
    return {**sample, "image": np.ascontiguousarray(image)}

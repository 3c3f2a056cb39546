"""The model side of inference: a :class:`Segmenter`, built and checked once per run.

A segmenter carries what the tile engine needs from a model: the forward pass, the
post-processing, the model's µm/px and class table, its identity (for output metadata and
resume keys) and its nucleus size guards. :func:`size_guards` turns the guards into model
pixels and checks them against the halo before any slide is read: an object whose diameter at
the maximum area exceeds the halo could not be owned whole by one tile.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsi_stnuc.classes import ClassTable
from wsi_stnuc.errors import InputError
from wsi_stnuc.model.postprocess import MAX_NUCLEUS_AREA_UM2, MIN_NUCLEUS_AREA_UM2

InstanceResult = tuple[np.ndarray, pd.DataFrame]


@dataclass
class Segmenter:
    """A nucleus model for :func:`wsi_stnuc.inference.infer.infer_slide`.

    ``forward`` maps a uint8 batch ``N x H x W x 3`` to N raw outputs; ``postprocess`` turns
    one raw output into ``(inst, info)`` (see ``model.postprocess.heads_to_instances``) and
    runs in worker threads, overlapping the next forward. ``mpp`` is the model's µm/px,
    ``classes`` its class table, ``identity`` what goes into the output metadata (and decides
    whether earlier results may be reused). ``min_area_um2``/``max_area_um2`` bound the
    nuclei it may report (a checkpoint stores its own).
    """

    forward: Callable[[np.ndarray], Sequence[Any]]
    mpp: float
    classes: ClassTable
    postprocess: Callable[[Any], InstanceResult] | None = None
    identity: dict = field(default_factory=dict)
    min_area_um2: float = MIN_NUCLEUS_AREA_UM2
    max_area_um2: float = MAX_NUCLEUS_AREA_UM2

    def __call__(self, images: np.ndarray) -> list[InstanceResult]:
        raw = self.forward(images)
        return [self.postprocess(r) if self.postprocess else r for r in raw]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_segmenter(
    path: str | Path, device: str = "auto", *, batch_size: int = 8, **postprocess_kwargs
) -> Segmenter:
    """A :class:`Segmenter` from a wsi-stnuc checkpoint (``NucleiNet`` + HoVer post-processing).

    ``postprocess_kwargs`` go to ``heads_to_instances`` (thresholds, speck size). A file that
    is not a checkpoint, or a device this torch cannot use, is an :class:`InputError`.
    """
    from wsi_stnuc.model.checkpoint import load_checkpoint
    from wsi_stnuc.model.device import check_device
    from wsi_stnuc.model.net import predict
    from wsi_stnuc.model.postprocess import heads_to_instances

    path = Path(path)
    model, meta = load_checkpoint(path, check_device(device))

    def forward(images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        heads = predict(model, images, batch_size=batch_size)
        return list(zip(heads["np"], heads["hv"], heads["tp"], strict=True))

    def postprocess(raw: tuple[np.ndarray, np.ndarray, np.ndarray]) -> InstanceResult:
        return heads_to_instances(*raw, **postprocess_kwargs)

    identity = {
        "name": path.name,
        "sha256": sha256_file(path),
        "version": meta.get("version", ""),
        "arch": meta.get("arch", {}),
        "postprocess": postprocess_kwargs,
    }
    classes = meta["classes"]
    if not isinstance(classes, ClassTable):  # the metadata holds the table or its dict form
        classes = ClassTable.from_dict(classes)
    return Segmenter(forward, float(meta["mpp"]), classes, postprocess, identity,
                     min_area_um2=meta["min_area_um2"], max_area_um2=meta["max_area_um2"])  # fmt: skip


def as_segmenter(model, device: str = "auto", batch_size: int = 8) -> Segmenter:
    """``model`` (a checkpoint path, a :class:`Segmenter` or a callable with ``.mpp`` and
    ``.classes``, optionally ``.min_area_um2``/``.max_area_um2``) as a :class:`Segmenter`."""
    if isinstance(model, Segmenter):
        return model
    if isinstance(model, str | Path):
        return checkpoint_segmenter(model, device, batch_size=batch_size)
    if callable(model) and hasattr(model, "mpp") and hasattr(model, "classes"):
        # a plain callable images -> [(inst, info), ...] that states its mpp and classes (and
        # may state its size guards)
        name = getattr(model, "__name__", type(model).__name__)
        return Segmenter(
            model, float(model.mpp), model.classes, identity={"name": name},
            min_area_um2=float(getattr(model, "min_area_um2", MIN_NUCLEUS_AREA_UM2)),
            max_area_um2=float(getattr(model, "max_area_um2", MAX_NUCLEUS_AREA_UM2)),
        )  # fmt: skip
    raise TypeError(
        "model must be a checkpoint path, a Segmenter, or a callable with .mpp and .classes; "
        f"got {type(model).__name__}"
    )


def model_tag(identity: dict) -> int:
    """A 24-bit number naming a model, stored on every exported QuPath object."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return int(hashlib.sha256(text.encode()).hexdigest()[:6], 16)


@dataclass(frozen=True)
class SizeGuards:
    """Nucleus size limits in µm² and what they mean at the model's resolution."""

    min_area_um2: float
    max_area_um2: float
    halo_px: int
    area_px: tuple[float, float]  # model px


def min_halo_px(max_area_um2: float, mpp: float) -> int:
    """The smallest halo (model px) that holds a disc of ``max_area_um2`` whole: its
    diameter plus one pixel for the rasterised box."""
    diameter_px = 2.0 * math.sqrt(max_area_um2 / math.pi) / mpp
    return math.ceil(diameter_px) + 1


def size_guards(
    seg: Segmenter,
    halo: int | None,
    min_area_um2: float | None = None,
    max_area_um2: float | None = None,
) -> SizeGuards:
    """The size guards for a run (options over the model's own) and the halo: the given one,
    checked to hold the largest allowed nucleus, or (``halo=None``) the smallest that does."""
    lo = seg.min_area_um2 if min_area_um2 is None else float(min_area_um2)
    hi = seg.max_area_um2 if max_area_um2 is None else float(max_area_um2)
    if not (0 <= lo < hi and math.isfinite(hi)):
        raise InputError(None, f"nucleus area limits must satisfy 0 <= min < max, got "
                               f"--min-area {lo:g} and --max-area {hi:g} µm²")  # fmt: skip
    need = min_halo_px(hi, seg.mpp)
    if halo is None:
        halo = need
    elif halo < need:
        raise InputError(
            None,
            f"--halo {halo} is too small for nuclei up to --max-area {hi:g} µm² (a "
            f"{2 * math.sqrt(hi / math.pi):.1f} µm disc = {need - 1} px at the model's "
            f"{seg.mpp:g} µm/px): use --halo {need} or more, or a smaller --max-area",
        )
    px = seg.mpp**2
    return SizeGuards(lo, hi, int(halo), (lo / px, hi / px))

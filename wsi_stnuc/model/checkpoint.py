"""Save and load trained models together with everything needed to use them.

A checkpoint is a ``torch.save`` dict (plain types and tensors only, so it loads with
``weights_only=True``): ``format`` (a marker), ``state_dict``, ``arch`` (the ``NucleiNet``
kwargs), ``classes`` (``ClassTable.to_dict()``), ``mpp`` (µm/px the model works at),
``train_config``, ``metrics``, ``version``, ``min_area_um2``/``max_area_um2`` (nucleus size
guards; absent in old files, which get the defaults) and, for resuming, optional ``extra``
(optimizer and scheduler states, epoch, ...).
"""

from __future__ import annotations

import dataclasses
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from wsi_stnuc import __version__
from wsi_stnuc.classes import ClassTable
from wsi_stnuc.errors import InputError
from wsi_stnuc.io_utils import atomic_path

from .net import NucleiNet, resolve_device
from .postprocess import MAX_NUCLEUS_AREA_UM2, MIN_NUCLEUS_AREA_UM2

FORMAT = "wsi-stnuc-checkpoint/1"
REQUIRED_KEYS = ("state_dict", "arch", "classes", "mpp")


@lru_cache(maxsize=1)
def version_string() -> str:
    """``wsi_stnuc.__version__`` plus the git commit of the source tree when there is one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+g{commit}" if commit else __version__


def _plain(obj: Any) -> Any:
    """Dataclasses and paths -> plain dicts/strings, so the file loads with weights_only."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalars
        return obj.item()
    return obj


def save_checkpoint(
    path: str | Path,
    model: NucleiNet,
    *,
    classes: ClassTable | list[dict],
    mpp: float,
    arch: dict | None = None,
    train_config: Any = None,
    metrics: dict | None = None,
    extra: dict | None = None,
    min_area_um2: float = MIN_NUCLEUS_AREA_UM2,
    max_area_um2: float = MAX_NUCLEUS_AREA_UM2,
) -> Path:
    """Write a checkpoint atomically (``path.partial`` then rename); returns ``path``.

    ``classes`` is a :class:`ClassTable` or its ``to_dict()`` list.
    ``arch`` defaults to ``model.arch``; ``train_config`` may be a dataclass or dict; ``extra``
    holds resume state (optimizer/scheduler state dicts, epoch) and is returned by
    :func:`load_checkpoint` under ``meta["extra"]``. ``min_area_um2`` / ``max_area_um2`` are
    the nucleus size guards inference applies (``model.postprocess``).
    """
    if not 0 <= min_area_um2 < max_area_um2:
        raise ValueError(f"need 0 <= min_area_um2 < max_area_um2, got {min_area_um2}, "
                         f"{max_area_um2}")  # fmt: skip
    if not isinstance(classes, ClassTable):
        classes = ClassTable.from_dict(classes)
    if classes.n_classes != model.n_classes:
        raise ValueError(
            f"class table has {classes.n_classes} classes, the model {model.n_classes}"
        )
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "arch": _plain(dict(arch if arch is not None else model.arch)),
        "classes": classes.to_dict(),
        "mpp": float(mpp),
        "train_config": _plain(train_config) if train_config is not None else {},
        "metrics": _plain(metrics or {}),
        "version": version_string(),
        "extra": extra or {},
        "min_area_um2": float(min_area_um2),
        "max_area_um2": float(max_area_um2),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict, checked; :class:`InputError` for a missing/corrupt/foreign file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip/torch errors vary by version and damage
        raise InputError(path, f"not a readable torch checkpoint ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(path, "not a wsi-stnuc model checkpoint (no wsi-stnuc format marker)")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise InputError(path, f"checkpoint lacks {missing}")
    return payload


def load_checkpoint(
    path: str | Path, device: str | torch.device | None = "auto"
) -> tuple[NucleiNet, dict]:
    """Rebuild the model (in eval mode, on ``device``) and return it with its metadata.

    ``meta`` keys: ``classes`` (``ClassTable.to_dict()`` list, as stored), ``classes_table``
    (the :class:`ClassTable`), ``mpp`` (float), ``arch``, ``train_config``, ``metrics``,
    ``version``, ``extra`` (resume state; may be empty), ``min_area_um2``, ``max_area_um2``.
    """
    payload = read_checkpoint(path)
    try:
        classes = ClassTable.from_dict(payload["classes"])
        model = NucleiNet(**payload["arch"])
        model.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise InputError(path, f"checkpoint does not match its architecture ({exc})") from exc
    model.to(resolve_device(device)).eval()
    meta = {
        "classes": classes.to_dict(),
        "classes_table": classes,
        "mpp": float(payload["mpp"]),
        "arch": dict(payload["arch"]),
        "train_config": payload.get("train_config", {}),
        "metrics": payload.get("metrics", {}),
        "version": payload.get("version", ""),
        "extra": payload.get("extra", {}),
        # checkpoints written before the size guards existed get the defaults
        "min_area_um2": float(payload.get("min_area_um2", MIN_NUCLEUS_AREA_UM2)),
        "max_area_um2": float(payload.get("max_area_um2", MAX_NUCLEUS_AREA_UM2)),
    }
    return model, meta

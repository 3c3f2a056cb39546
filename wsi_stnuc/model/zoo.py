"""Models shipped inside the package: fp16 checkpoints with a model card beside each.

``wsi_stnuc/data/models/NAME.pt`` is an ordinary checkpoint (see
:mod:`wsi_stnuc.model.checkpoint`) whose floating-point tensors are stored as float16 (half the
size; :func:`~wsi_stnuc.model.checkpoint.load_checkpoint` copies them into the float32 model)
and whose resume state is dropped. ``NAME.json`` is its model card: training data and their
licences, ST chain settings, resolution, classes, the accuracy table and the intended use.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from wsi_stnuc.errors import InputError
from wsi_stnuc.io_utils import atomic_path

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "models"
DEFAULT_MODEL = "stnuc-effl0-v1"


def shipped_models() -> list[str]:
    """Names of the models shipped with the package (a ``.pt`` with its ``.json`` card)."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.pt") if p.with_suffix(".json").exists())


def model_card(name: str) -> dict:
    """The card of a shipped model; :class:`InputError` for an unknown name."""
    path = SHIPPED_DIR / f"{name}.json"
    if not path.is_file():
        raise InputError(name, f"no shipped model of that name (shipped: {shipped_models()})")
    return json.loads(path.read_text(encoding="utf-8"))


def resolve_model(spec: str | Path | None) -> tuple[Path, str | None]:
    """``(checkpoint path, shipped name or None)`` for a ``--model`` value: ``None`` -> the
    default shipped model, a shipped name -> its file, anything else -> that path."""
    if spec is None:
        spec = DEFAULT_MODEL
        if DEFAULT_MODEL not in shipped_models():
            raise InputError(SHIPPED_DIR / f"{DEFAULT_MODEL}.pt",
                             "the default model is not installed; pass --model")  # fmt: skip
    if str(spec) in shipped_models():
        return SHIPPED_DIR / f"{spec}.pt", str(spec)
    return Path(spec), None


def _half(state: dict) -> dict:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def ship_checkpoint(
    checkpoint: str | Path,
    name: str = DEFAULT_MODEL,
    *,
    card: dict | None = None,
    scores: dict | None = None,
    out_dir: str | Path | None = None,
) -> Path:
    """Write ``checkpoint`` as shipped model ``name`` (fp16 weights, no resume state) plus its
    card (``card`` merged with the checkpoint's facts and ``scores``); returns the ``.pt``."""
    from wsi_stnuc.model.checkpoint import read_checkpoint

    payload = read_checkpoint(checkpoint)
    payload = {**payload, "state_dict": _half(payload["state_dict"]), "extra": {}}
    out = Path(out_dir) if out_dir is not None else SHIPPED_DIR
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.pt"
    with atomic_path(weights) as tmp:
        torch.save(payload, tmp)
    facts = {
        "name": name,
        "file": weights.name,
        "size_mb": round(weights.stat().st_size / 2**20, 2),
        "mpp": payload["mpp"],
        "classes": [c["name"] for c in payload["classes"]],
        "arch": payload["arch"],
        "version": payload.get("version", ""),
        "train_config": payload.get("train_config", {}),
    }
    full = {**facts, **(card or {})}
    if scores is not None:
        full["scores"] = scores
    with atomic_path(weights.with_suffix(".json")) as tmp:
        Path(tmp).write_text(json.dumps(full, indent=1, default=float) + "\n", encoding="utf-8")
    return weights

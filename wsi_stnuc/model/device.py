"""Check a ``--device`` string once, before any work, against this torch build."""

from __future__ import annotations

from wsi_stnuc.errors import InputError


def check_device(device: str) -> str:
    """``device`` if this torch can use it (``auto``, ``cpu``, ``cuda[:N]``, ``mps``); else an
    :class:`InputError` saying why (a typo, CUDA on a CPU-only build, a GPU index too high)."""
    import torch

    if device == "auto":
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(None, f"--device {device!r} is not a device (auto, cpu, cuda, "
                               "cuda:1, mps)") from exc  # fmt: skip
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no visible GPU"
            raise InputError(None, f"--device {device!r}: torch {torch.__version__} has "
                                   f"{build}; use --device cpu")  # fmt: skip
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(None, f"--device {device!r}: only {torch.cuda.device_count()} "
                                   "CUDA device(s) visible")  # fmt: skip
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(None, f"--device {device!r}: MPS is not available here")
    elif dev.type != "cpu":
        raise InputError(None, f"--device {device!r}: unsupported device type {dev.type!r}")
    return device

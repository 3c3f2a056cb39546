"""Training curves as one PNG: losses, validation PQ and per-class F1, all by step.

Drawn from the trainer's log rows (one per epoch; validation columns only where it
validated), so a rerun of the plot needs nothing but ``log.csv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from wsi_stnuc.io_utils import atomic_path

__all__ = ["plot_training_curves"]

FIGSIZE = (12.0, 3.6)  # inches
DPI = 100


def plot_training_curves(
    rows: Sequence[dict] | pd.DataFrame,
    path: str | Path,
    *,
    classes: Sequence[str] = (),
) -> Path:
    """Write ``path`` (PNG, 1200 x 360 px): training and validation loss (left), validation PQ
    (middle), validation pixel F1 per class (right), against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    log = pd.DataFrame(list(rows)) if not isinstance(rows, pd.DataFrame) else rows
    fig, axes = plt.subplots(1, 3, figsize=FIGSIZE, dpi=DPI, constrained_layout=True)
    try:
        _losses(axes[0], log)
        _series(axes[1], log, {"val_pq": "PQ", "val_dq": "DQ", "val_sq": "SQ"}, "validation")
        f1 = {f"val_f1_{c}": c for c in classes}
        _series(axes[2], log, f1, "validation pixel F1 per class")
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


def _losses(ax, log: pd.DataFrame) -> None:
    step = log.get("step", pd.Series(dtype=float))
    for col, label in (("train_total", "train"), ("val_loss", "validation")):
        if col in log:
            ok = log[col].notna()
            ax.plot(step[ok], log.loc[ok, col], marker=".", label=label)
    ax.set(title="loss", xlabel="step")
    _legend(ax)


def _series(ax, log: pd.DataFrame, columns: dict[str, str], title: str) -> None:
    step = log.get("step", pd.Series(dtype=float))
    for col, label in columns.items():
        if col in log and log[col].notna().any():
            ok = log[col].notna()
            ax.plot(step[ok], log.loc[ok, col], marker="o", ms=3, label=label)
    ax.set(title=title, xlabel="step", ylim=(0, 1))
    ax.grid(alpha=0.3)
    _legend(ax)


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no validation", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks(np.array([]))

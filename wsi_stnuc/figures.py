"""Shared drawing helpers for the stage figures (matplotlib, Agg backend, no display).

Every stage's picture (labels QC, training curves, slide overview) draws nuclei the same way:
class colours from the :class:`~wsi_stnuc.classes.ClassTable` (the colours QuPath shows),
centroids as one scatter call or outlines as one ``PolyCollection``, never one artist per
nucleus, so a whole slide's million nuclei cost one draw call. Files are written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsi_stnuc.classes import UNKNOWN, ClassTable
from wsi_stnuc.io_utils import atomic_path

__all__ = ["UNKNOWN_RGB", "class_rgb", "legend_handles", "new_figure", "outline_collection",
           "save_png"]  # fmt: skip

UNKNOWN_RGB = (160, 160, 160)


def new_figure(width_px: int, height_px: int, dpi: int = 100, **kwargs):
    """A matplotlib ``Figure`` of exactly ``width_px x height_px`` pixels, off-screen."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, **kwargs)


def save_png(fig, path: str | Path) -> Path:
    """Write ``fig`` as PNG at its own size (atomic); the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def class_rgb(names: Sequence[str] | np.ndarray, classes: ClassTable) -> np.ndarray:
    """``N x 3`` float RGB in [0, 1] per class name (``unknown`` and strangers grey)."""
    names = np.asarray(names, dtype=object)
    lut = {n: c for n, c in zip(classes.names, classes.colors, strict=True)}
    uniq, inv = np.unique(names.astype(str), return_inverse=True)
    colours = np.array([lut.get(u, UNKNOWN_RGB) for u in uniq], dtype=np.float64).reshape(-1, 3)
    return colours[inv] / 255.0


def legend_handles(classes: ClassTable, counts: dict[str, int] | None = None) -> list:
    """Legend patches for the classes (+ ``unknown``), with counts when given."""
    from matplotlib.patches import Patch

    names = [*classes.names, UNKNOWN]
    colours = [*classes.colors, UNKNOWN_RGB]
    handles = []
    for name, rgb in zip(names, colours, strict=True):
        n = None if counts is None else counts.get(name, 0)
        if counts is not None and not n:
            continue
        label = name if n is None else f"{name} ({n:,})"
        handles.append(Patch(color=np.asarray(rgb) / 255.0, label=label))
    return handles


def outline_collection(geoms: np.ndarray, colours: np.ndarray, *, linewidth: float = 0.8):
    """One ``PolyCollection`` of polygon exteriors (shapely array), edges in ``colours``."""
    import shapely
    from matplotlib.collections import PolyCollection

    parts, part_of = shapely.get_parts(geoms, return_index=True)
    colours = np.asarray(colours)[part_of] if np.ndim(colours) == 2 else colours
    coords, owner = shapely.get_coordinates(shapely.get_exterior_ring(parts), return_index=True)
    splits = np.flatnonzero(np.diff(owner)) + 1
    verts = np.split(coords, splits) if len(coords) else []
    return PolyCollection(verts, facecolors="none", edgecolors=colours, linewidths=linewidth)

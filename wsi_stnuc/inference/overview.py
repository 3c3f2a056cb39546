"""Per-slide overview PNG: the slide with its nuclei coloured by class, and their density.

Made for a whole slide's NucleusTable: only the centroid and class columns are read (pyarrow,
batch by batch), and nuclei are binned onto a grid of at least :data:`MIN_BIN_UM` (at most
:data:`MAX_BINS` bins a side) with ``np.bincount``: each bin shows its most frequent class, and
the density panel its nuclei per mm². A million nuclei cost a few bincounts, no artist each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scipy import ndimage

from wsi_stnuc.classes import UNKNOWN, ClassTable
from wsi_stnuc.figures import UNKNOWN_RGB, legend_handles, new_figure, save_png
from wsi_stnuc.formats import NucleusCols as C

__all__ = ["MAX_BINS", "MIN_BIN_UM", "SIZE_PX", "ClassGrid", "class_grid", "overview_path",
           "write_overview", "write_slide_overview"]  # fmt: skip

SIZE_PX = (1500, 560)
MIN_BIN_UM = 8.0  # about one nucleus: finer bins would show single nuclei as specks
MAX_BINS = 400


@dataclass
class ClassGrid:
    """Nuclei counted per bin and class: ``counts`` is ``rows x cols x (K + 1)`` (last:
    unknown / other), bins of ``bin_px`` level-0 px."""

    counts: np.ndarray
    bin_px: float
    names: tuple[str, ...]

    @property
    def total(self) -> np.ndarray:
        return self.counts.sum(axis=2)

    def density_per_mm2(self, mpp: float, smooth_um: float = 40.0) -> np.ndarray:
        """Nuclei per mm², smoothed over ``smooth_um`` so a bin's count noise does not show."""
        bin_mm2 = (self.bin_px * mpp / 1000.0) ** 2
        sigma = max(smooth_um / (self.bin_px * mpp), 0.0)
        return ndimage.gaussian_filter(self.total.astype(np.float64), sigma) / bin_mm2


def class_grid(
    parquet: str | Path, dims: tuple[int, int], mpp: float, classes: ClassTable
) -> ClassGrid:
    """Bin the nuclei of a NucleusTable by centroid and class (reads two columns + class)."""
    w0, h0 = dims
    bin_px = max(MIN_BIN_UM / mpp, max(w0, h0) / MAX_BINS)
    cols, rows = max(1, int(np.ceil(w0 / bin_px))), max(1, int(np.ceil(h0 / bin_px)))
    k = classes.n_classes
    counts = np.zeros(rows * cols * (k + 1), np.int64)
    lut = {name: i for i, name in enumerate(classes.names)}
    table = pq.ParquetFile(parquet)
    for batch in table.iter_batches(columns=[C.CENTROID_X, C.CENTROID_Y, C.CLASS_NAME]):
        x = batch.column(C.CENTROID_X).to_numpy(zero_copy_only=False)
        y = batch.column(C.CENTROID_Y).to_numpy(zero_copy_only=False)
        names = np.asarray(batch.column(C.CLASS_NAME).to_pylist(), dtype=object)
        uniq, inv = np.unique(names.astype(str), return_inverse=True)
        cls = np.array([lut.get(u, k) for u in uniq], np.int64)[inv] if len(uniq) else inv
        j = np.clip((x / bin_px).astype(np.int64), 0, cols - 1)
        i = np.clip((y / bin_px).astype(np.int64), 0, rows - 1)
        flat = (i * cols + j) * (k + 1) + cls
        counts += np.bincount(flat, minlength=counts.size)
    return ClassGrid(counts.reshape(rows, cols, k + 1), bin_px, tuple(classes.names))


def _class_rgba(grid: ClassGrid, classes: ClassTable) -> np.ndarray:
    """RGBA image of the grid: the majority class's colour where a bin has nuclei."""
    palette = np.array([*classes.colors, UNKNOWN_RGB], np.float64) / 255.0
    rgba = np.zeros((*grid.total.shape, 4))
    rgba[..., :3] = palette[grid.counts.argmax(axis=2)]
    rgba[..., 3] = np.where(grid.total > 0, 0.85, 0.0)
    return rgba


def write_overview(
    path: str | Path,
    parquet: str | Path,
    thumbnail: np.ndarray,
    dims: tuple[int, int],
    mpp: float,
    classes: ClassTable,
    *,
    title: str = "",
    tissue_mm2: float | None = None,
) -> Path:
    """Write the overview PNG (:data:`SIZE_PX`): thumbnail, class map, density per mm²."""
    grid = class_grid(parquet, dims, mpp, classes)
    w0, h0 = dims
    extent = (0, w0, h0, 0)
    fig = new_figure(*SIZE_PX, layout="constrained")
    ax_img, ax_cls, ax_den = fig.subplots(1, 3)
    ax_img.imshow(thumbnail, extent=extent)
    ax_img.set_title(title or "slide", fontsize=10)
    ax_cls.imshow(thumbnail, extent=extent, alpha=0.5)
    ax_cls.imshow(_class_rgba(grid, classes), extent=extent, interpolation="nearest")
    per_class = dict(zip([*classes.names, UNKNOWN], grid.counts.sum(axis=(0, 1)).tolist(),
                         strict=True))  # fmt: skip
    ax_cls.legend(handles=legend_handles(classes, per_class), fontsize=8, loc="upper right")
    ax_cls.set_title(f"{int(grid.total.sum()):,} nuclei, majority class per "
                     f"{grid.bin_px * mpp:.0f} µm bin", fontsize=10)  # fmt: skip
    density = grid.density_per_mm2(mpp)
    im = ax_den.imshow(np.where(grid.total > 0, density, np.nan), extent=extent, cmap="magma")
    fig.colorbar(im, ax=ax_den, shrink=0.8, label="nuclei per mm²")
    mean = f"; {grid.total.sum() / tissue_mm2:,.0f} per mm² of tissue" if tissue_mm2 else ""
    ax_den.set_title(f"density{mean}", fontsize=10)
    for ax in (ax_img, ax_cls, ax_den):
        ax.set(xlim=(0, w0), ylim=(h0, 0), xticks=[], yticks=[])
    return save_png(fig, path)


def overview_path(parquet: str | Path) -> Path:
    """``OUT/NAME.overview.png`` beside ``OUT/NAME.parquet``."""
    parquet = Path(parquet)
    return parquet.with_name(parquet.name.removesuffix(".parquet") + ".overview.png")


def write_slide_overview(result, slide) -> Path | None:
    """The overview of a finished slide (a :class:`~wsi_stnuc.inference.infer.SlideResult`,
    ``slide`` its open reader, with the µm/px the run used), next to its NucleusTable;
    ``None`` (and a warning) if it cannot be drawn: a picture must not fail a slide whose
    results are written."""
    import logging

    try:
        thumb, dims, mpp = slide.thumbnail(1024), slide.dimensions, float(np.mean(slide.mpp))
        return write_overview(
            overview_path(result.parquet), result.parquet, thumb, dims, mpp,
            ClassTable.from_dict(result.classes), title=f"{result.name}: {result.n_nuclei:,} nuclei",
            tissue_mm2=result.tissue_area_mm2,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - reported, never fatal (see docstring)
        logging.getLogger(__name__).warning("%s: no overview picture (%s)", result.name, exc)
        return None

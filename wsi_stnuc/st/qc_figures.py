"""The ``labels`` stage's picture: registration QC and the class map of the LabelSet.

One PNG, readable at a glance: ST nucleus outlines over the H&E in a few zoomed windows
before (top row) and after (bottom row) refinement, the residual distribution in µm, and the
LabelSet's nuclei coloured by image class over a slide thumbnail.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

from wsi_stnuc.classes import ClassTable
from wsi_stnuc.figures import class_rgb, legend_handles, new_figure, outline_collection, save_png
from wsi_stnuc.formats import LabelCols as L
from wsi_stnuc.st.align import transform_geometries
from wsi_stnuc.st.registration_qc import RegistrationQC

__all__ = ["SIZE_PX", "plot_labels_qc", "write_labels_qc"]

SIZE_PX = (1600, 800)
BEFORE_RGB, AFTER_RGB = (1.0, 0.85, 0.0), (0.0, 0.9, 0.3)  # yellow / green on pink-purple


def plot_labels_qc(
    path: str | Path,
    qc: RegistrationQC,
    nuclei_um: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    labels: gpd.GeoDataFrame,
    classes: ClassTable,
    thumbnail: np.ndarray,
    slide_dims: tuple[int, int],
) -> Path:
    """Write the labels QC figure (PNG, :data:`SIZE_PX`); ``nuclei_um`` the ST nucleus
    polygons (µm), ``before``/``after`` the affines ST µm -> level-0 px."""
    fig = new_figure(*SIZE_PX, layout="constrained")
    n = max(len(qc.windows), 1)
    grid = fig.add_gridspec(2, n + 2)
    for row, (matrix, colour, when) in enumerate(
        ((before, BEFORE_RGB, "before"), (after, AFTER_RGB, "after"))
    ):
        geoms = transform_geometries(nuclei_um, matrix)
        for k, (window, crop) in enumerate(zip(qc.windows, qc.crops, strict=True)):
            ax = fig.add_subplot(grid[row, k])
            _crop_panel(ax, crop, window, geoms, colour)
            ax.set_title(f"window {k + 1}: ST nuclei {when} refinement", fontsize=9)
    _residual_panel(fig.add_subplot(grid[0, n:]), qc)
    _class_map(fig.add_subplot(grid[1, n:]), labels, classes, thumbnail, slide_dims)
    return save_png(fig, path)


def _crop_panel(ax, crop: np.ndarray, window, geoms: np.ndarray, colour) -> None:
    x0, y0, w, h = window
    ax.imshow(crop, extent=(x0, x0 + w, y0 + h, y0), interpolation="nearest")
    box = shapely.box(x0, y0, x0 + w, y0 + h)
    near = geoms[shapely.intersects(geoms, box)]
    ax.add_collection(outline_collection(near, colour, linewidth=1.0))
    ax.set(xlim=(x0, x0 + w), ylim=(y0 + h, y0), xticks=[], yticks=[])


def _residual_panel(ax, qc: RegistrationQC) -> None:
    top = max(8.0, float(np.percentile(np.r_[qc.residual_before_um, 0.0], 98)))
    bins = np.linspace(0, top, 33)
    for values, colour, when in (
        (qc.residual_before_um, BEFORE_RGB, "before"),
        (qc.residual_after_um, AFTER_RGB, "after"),
    ):
        if len(values):
            ax.hist(np.clip(values, 0, top), bins=bins, color=colour, alpha=0.6,
                    label=f"{when}: median {np.median(values):.2f} µm")  # fmt: skip
    ax.axvline(qc.match_um, color="k", lw=0.8, ls="--")
    ax.set(xlabel="ST nucleus to nearest H&E nucleus (µm)", ylabel="ST nuclei",
           title=f"registration residual ({qc.n_points} nuclei; {qc.matched_fraction:.0%} "
                 f"within {qc.match_um:g} µm after)")  # fmt: skip
    ax.title.set_fontsize(9)
    if qc.n_points:
        ax.legend(fontsize=8)


def _class_map(ax, labels, classes: ClassTable, thumbnail: np.ndarray, dims) -> None:
    w0, h0 = dims
    ax.imshow(thumbnail, extent=(0, w0, h0, 0), interpolation="bilinear")
    cents = shapely.centroid(np.asarray(labels.geometry.values))
    names = labels[L.IMAGE_CLASS].astype(str).to_numpy()
    # Point size in points² shrinks with the nucleus count: a dense slide stays readable.
    size = float(np.clip(4e4 / max(len(labels), 1), 0.3, 6.0))
    ax.scatter(shapely.get_x(cents), shapely.get_y(cents), s=size, c=class_rgb(names, classes),
               linewidths=0, rasterized=True)  # fmt: skip
    counts = {str(k): int(v) for k, v in labels[L.IMAGE_CLASS].value_counts().items()}
    ax.legend(handles=legend_handles(classes, counts), fontsize=8, loc="upper right")
    ax.set(xlim=(0, w0), ylim=(h0, 0), xticks=[], yticks=[])
    ax.set_title(f"LabelSet: {len(labels):,} nuclei by image class", fontsize=9)


def write_labels_qc(
    path: str | Path,
    slide,
    nuclei: gpd.GeoDataFrame,
    labels: gpd.GeoDataFrame,
    classes: ClassTable,
    before: np.ndarray,
    after: np.ndarray,
    *,
    match_um: float = 3.0,
) -> tuple[RegistrationQC, Path]:
    """Measure the registration of the labelled ST nuclei and draw the labels QC figure.

    ``nuclei``: the bundle's nucleus table (µm, ``cell_id``); only the labelled cells count.
    """
    from wsi_stnuc.st.registration_qc import registration_qc

    mine = nuclei[nuclei[L.CELL_ID].astype(str).isin(labels[L.CELL_ID].astype(str))]
    geoms = np.asarray(mine.geometry.values)
    cents = shapely.centroid(geoms)
    xy = np.column_stack([shapely.get_x(cents), shapely.get_y(cents)])
    qc = registration_qc(slide, xy, np.asarray(before), np.asarray(after), match_um=match_um)
    thumb = slide.thumbnail(1024)
    fig_path = plot_labels_qc(path, qc, geoms, before, after, labels, classes, thumb,
                              slide.dimensions)  # fmt: skip
    return qc, fig_path

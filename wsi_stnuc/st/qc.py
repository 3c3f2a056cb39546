"""Cell quality control before labelling: which ST cells are trustworthy training labels.

Each dropped cell is counted under the first reason it fails, in this order:

``low_counts``      fewer than ``min_counts`` gene counts (controls excluded)
``few_genes``       fewer than ``min_genes`` genes detected
``no_nucleus``      no nucleus polygon at all
``invalid_polygon`` a nucleus polygon ``shapely.make_valid`` cannot turn into an area
``nucleus_area``    every nucleus of the cell outside ``nucleus_area_um2``
``outside_slide``   every nucleus outside ``slide_bounds``

Invalid polygons that ``make_valid`` can repair are kept (their largest polygon part); the
number repaired is reported. A cell with several nuclei keeps the nuclei that pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp
import shapely

from wsi_stnuc.formats import Xenium as X
from wsi_stnuc.st.bundle import STBundle
from wsi_stnuc.st.generic import largest_polygon

log = logging.getLogger(__name__)

REASONS = (
    "low_counts",
    "few_genes",
    "no_nucleus",
    "invalid_polygon",
    "nucleus_area",
    "outside_slide",
)


@dataclass
class QCReport:
    """Cells in and out, and how many were dropped for each reason."""

    n_in: int
    n_out: int
    dropped: dict[str, int] = field(default_factory=dict)
    repaired_polygons: int = 0
    nuclei_dropped: int = 0

    def to_frame(self) -> pd.DataFrame:
        rows = [("cells in", self.n_in)]
        rows += [(f"dropped: {r}", self.dropped.get(r, 0)) for r in REASONS]
        rows += [
            ("cells kept", self.n_out),
            ("polygons repaired", self.repaired_polygons),
            ("extra nuclei dropped", self.nuclei_dropped),
        ]
        return pd.DataFrame(rows, columns=["step", "cells"]).set_index("step")

    def __str__(self) -> str:
        return self.to_frame().to_string()


def _counts_and_genes(x) -> tuple[np.ndarray, np.ndarray]:
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        counts = np.asarray(x.sum(axis=1)).ravel()
        genes = np.diff((x > 0).tocsr().indptr)
    else:
        x = np.asarray(x)
        counts, genes = x.sum(axis=1), (x > 0).sum(axis=1)
    return counts, genes


def qc_cells(
    bundle: STBundle,
    *,
    min_counts: int = 10,
    min_genes: int = 3,
    nucleus_area_um2: tuple[float, float] = (5.0, 400.0),
    slide_bounds=None,
) -> tuple[STBundle, QCReport]:
    """Filter cells and repair nucleus polygons; return the filtered bundle and a report.

    Args:
        min_counts, min_genes: expression floor (a cell below it cannot be typed reliably).
        nucleus_area_um2: plausible nucleus area range in µm² (segmentation debris and merged
            blobs fall outside).
        slide_bounds: a shapely geometry or ``(x0, y0, x1, y1)`` box **in the bundle's µm
            frame** (e.g. the slide rectangle mapped back through the alignment); nuclei whose
            centroid is outside are dropped. ``None`` skips the test.
    """
    adata = bundle.adata
    ids = adata.obs_names.to_numpy().astype(str)
    n_in = len(ids)
    reason = np.full(n_in, "", dtype=object)

    counts, genes = _counts_and_genes(adata.X)
    reason[(reason == "") & (counts < min_counts)] = "low_counts"
    reason[(reason == "") & (genes < min_genes)] = "few_genes"

    nuclei = bundle.nuclei
    geoms = np.asarray(nuclei.geometry.values)
    invalid = ~shapely.is_valid(geoms)
    repaired = 0
    if invalid.any():
        fixed = largest_polygon(shapely.make_valid(geoms[invalid]))
        ok = ~(shapely.is_missing(fixed) | shapely.is_empty(fixed))
        ok &= shapely.area(np.where(ok, fixed, None)) > 0
        geoms = geoms.copy()
        geoms[np.flatnonzero(invalid)] = np.where(ok, fixed, None)
        repaired = int(ok.sum())
    bad_poly = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    area = np.where(bad_poly, np.nan, shapely.area(geoms))
    lo, hi = nucleus_area_um2
    area_ok = (area >= lo) & (area <= hi)
    inside = np.ones(len(geoms), bool)
    if slide_bounds is not None:
        if isinstance(slide_bounds, (tuple, list, np.ndarray)):
            slide_bounds = shapely.box(*slide_bounds)
        cents = shapely.centroid(np.where(bad_poly, None, geoms))
        inside = (
            shapely.contains_xy(slide_bounds, shapely.get_x(cents), shapely.get_y(cents))
            & ~bad_poly
        )

    # Per-cell outcome from per-nucleus flags: a cell fails a test when none of its nuclei pass.
    nuc_ids = nuclei[X.CELL_ID].to_numpy().astype(str)
    index = pd.Index(ids)
    pos = index.get_indexer(nuc_ids)
    known = pos >= 0  # nuclei of cells absent from adata are dropped with them
    has = np.zeros(n_in, bool)
    has[pos[known]] = True

    def any_per_cell(flag: np.ndarray) -> np.ndarray:
        return np.bincount(pos[known], weights=flag[known], minlength=n_in) > 0

    valid_any = any_per_cell(~bad_poly)
    area_any = any_per_cell(~bad_poly & area_ok)
    inside_any = any_per_cell(~bad_poly & area_ok & inside)
    reason[(reason == "") & ~has] = "no_nucleus"
    reason[(reason == "") & ~valid_any] = "invalid_polygon"
    reason[(reason == "") & ~area_any] = "nucleus_area"
    reason[(reason == "") & ~inside_any] = "outside_slide"

    keep_cell = reason == ""
    cell_kept = known & keep_cell[np.where(known, pos, 0)]
    keep_nuc = ~bad_poly & area_ok & inside & cell_kept
    new_nuclei = nuclei.set_geometry(geoms)[keep_nuc].reset_index(drop=True)
    dropped = {r: int((reason == r).sum()) for r in REASONS}
    out = replace(bundle.subset(ids[keep_cell]), nuclei=new_nuclei)
    n_kept = int(keep_cell.sum())
    extra = int((~keep_nuc & cell_kept).sum())
    report = QCReport(n_in, n_kept, dropped, repaired, extra)
    log.info("QC kept %d of %d cells", n_kept, n_in)
    return out, report

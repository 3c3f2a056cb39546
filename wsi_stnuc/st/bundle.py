"""The in-memory form of a cell-level spatial transcriptomics run (any technology)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd


@dataclass
class STBundle:
    """Expression plus nucleus (and optional cell) outlines of one ST section.

    Attributes:
        adata: cells x genes counts. ``obs`` index = ``cell_id`` (``str``); ``var`` holds genes
            only; control-probe / codeword counts and the cells table columns live in ``obs``.
        nuclei: ``cell_id`` + ``geometry`` (Polygon, µm in the ST frame). One row per nucleus;
            a cell may own several rows.
        cells: cell boundaries (same columns), or ``None`` when the bundle has none.
        pixel_size: µm per morphology (DAPI) pixel, used to go from µm to the 10x alignment frame.
        source: where the bundle was read from.
        meta: free metadata (e.g. the ``experiment.xenium`` JSON).
        transcripts: path of the transcript table, kept lazy (read it with
            :func:`wsi_stnuc.st.xenium.read_transcripts`), or ``None``.
    """

    adata: ad.AnnData
    nuclei: gpd.GeoDataFrame
    cells: gpd.GeoDataFrame | None
    pixel_size: float
    source: Path
    meta: dict = field(default_factory=dict)
    transcripts: Path | None = None

    @property
    def n_cells(self) -> int:
        return int(self.adata.n_obs)

    def subset(self, cell_ids: np.ndarray | list[str]) -> STBundle:
        """A bundle restricted to ``cell_ids`` (kept in ``adata`` order); tables stay aligned."""
        wanted = pd.Index(np.asarray(cell_ids, dtype=object))
        keep = self.adata.obs_names.isin(wanted)
        adata = self.adata[keep].copy()
        ids = adata.obs_names
        nuclei = self.nuclei[self.nuclei["cell_id"].isin(ids).to_numpy()].reset_index(drop=True)
        cells = None
        if self.cells is not None:
            cells = self.cells[self.cells["cell_id"].isin(ids).to_numpy()].reset_index(drop=True)
        return replace(self, adata=adata, nuclei=nuclei, cells=cells)

    def __repr__(self) -> str:
        n_cells = 0 if self.cells is None else len(self.cells)
        return (
            f"STBundle({self.n_cells} cells x {self.adata.n_vars} genes, {len(self.nuclei)} "
            f"nuclei, {n_cells} cell outlines, pixel_size={self.pixel_size} µm, "
            f"source={str(self.source)!r})"
        )

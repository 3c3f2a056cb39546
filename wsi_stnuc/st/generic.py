"""Any cell-level ST technology: an AnnData of counts plus a table of nucleus polygons.

For CosMx, MERSCOPE, Visium HD (segmented), or a Xenium run re-segmented elsewhere. Polygons
may be GeoParquet, GeoJSON, or a CSV/parquet vertex table (``cell_id, vertex_x, vertex_y``
rows contiguous per polygon, as Xenium writes them). Geometry may be in µm or in morphology
pixels (``units="px"``, scaled by ``pixel_size`` into µm on reading).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import anndata as ad
import geopandas as gpd
import numpy as np
import pyarrow as pa
import scipy.sparse as sp
import shapely

from wsi_stnuc.errors import InputError
from wsi_stnuc.formats import Xenium as X
from wsi_stnuc.st.bundle import STBundle
from wsi_stnuc.st.geometry import ids_to_str, polygons_from_vertices
from wsi_stnuc.st.xenium import read_table

log = logging.getLogger(__name__)


def read_polygons(
    path: str | Path,
    *,
    id_column: str = X.CELL_ID,
    x_column: str = X.VERTEX_X,
    y_column: str = X.VERTEX_Y,
) -> gpd.GeoDataFrame:
    """Polygons from GeoParquet, GeoJSON/any OGR file, or a CSV/parquet vertex table.

    Returns ``cell_id`` (str) + ``geometry``; multipolygons keep their largest part.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "polygon file not found")
    name = path.name.lower()
    is_vertex_table = name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz"))
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        is_vertex_table = b"geo" not in (pq.read_schema(path).metadata or {})
    if is_vertex_table:
        table = read_table(path, [id_column, x_column, y_column])
        ids, polys = polygons_from_vertices(
            table[id_column], table[x_column].to_numpy(), table[y_column].to_numpy(), path=path
        )
        return gpd.GeoDataFrame({X.CELL_ID: ids}, geometry=polys)
    try:
        gdf = gpd.read_parquet(path) if name.endswith(".parquet") else gpd.read_file(path)
    except Exception as exc:  # geopandas/pyogrio raise many types for unreadable files
        raise InputError(path, f"cannot read polygons ({exc})") from exc
    if id_column not in gdf.columns:
        raise InputError(path, f"no {id_column!r} column; has {list(gdf.columns)}")
    geoms = np.asarray(gdf.geometry.values)
    if len(geoms) == 0 or shapely.is_empty(geoms).all():
        raise InputError(path, "no polygons")
    geoms = largest_polygon(geoms)
    ids = ids_to_str(pa.array(gdf[id_column].to_numpy()))
    out = gpd.GeoDataFrame(
        {X.CELL_ID: np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object)}, geometry=geoms
    )
    empty = shapely.is_empty(geoms) | shapely.is_missing(geoms)
    if empty.any():
        log.warning("%s: dropped %d empty geometries", path, int(empty.sum()))
        out = out[~empty].reset_index(drop=True)
    return out


def largest_polygon(geoms: np.ndarray) -> np.ndarray:
    """Each geometry's largest polygon part (vectorised; polygons pass through)."""
    geoms = np.asarray(geoms)
    multi = shapely.get_type_id(geoms) != 3  # 3 = Polygon
    if not multi.any():
        return geoms
    out = geoms.copy()
    parts, owner = shapely.get_parts(geoms[multi], return_index=True)
    area = shapely.area(parts)
    poly = shapely.get_type_id(parts) == 3
    area = np.where(poly, area, -1.0)
    # stable: sort by (owner, -area), first of each owner wins
    order = np.lexsort((-area, owner))
    first = np.ones(len(order), bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    best = order[first]
    chosen = np.full(int(multi.sum()), None, dtype=object)
    chosen[owner[best]] = np.where(area[best] >= 0, parts[best], None)
    out[np.flatnonzero(multi)] = chosen
    return out


def read_anndata_polygons(
    h5ad: str | Path | ad.AnnData,
    polygons: str | Path | gpd.GeoDataFrame,
    *,
    id_column: str = X.CELL_ID,
    units: Literal["um", "px"] = "um",
    pixel_size: float = 1.0,
    obs_id_column: str | None = None,
) -> STBundle:
    """Build an :class:`STBundle` from an AnnData and nucleus polygons.

    Args:
        h5ad: path to ``.h5ad`` (or an AnnData). ``obs_id_column`` names the obs column holding
            the cell ids when they are not the obs index.
        polygons: GeoParquet / GeoJSON / vertex table (or a GeoDataFrame) with ``id_column``.
        units: ``"um"`` or ``"px"`` (morphology pixels, multiplied by ``pixel_size``).
        pixel_size: µm per pixel of the polygon/alignment frame (kept in the bundle, used by
            :func:`wsi_stnuc.st.align.microns_to_slide_matrix`).

    Raises:
        InputError: unreadable inputs, no shared ids, polygons of cells not in the AnnData.
    """
    if units not in ("um", "px"):
        raise InputError(None, f"units must be 'um' or 'px', got {units!r}")
    if not (np.isfinite(pixel_size) and pixel_size > 0):
        raise InputError(None, f"pixel_size must be positive, got {pixel_size}")
    src = Path(h5ad) if not isinstance(h5ad, ad.AnnData) else Path("<AnnData>")
    if isinstance(h5ad, ad.AnnData):
        adata = h5ad.copy()
    else:
        try:
            adata = ad.read_h5ad(src)
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(src, f"cannot read AnnData ({exc})") from exc
    if obs_id_column is not None:
        if obs_id_column not in adata.obs:
            raise InputError(src, f"no obs column {obs_id_column!r}")
        adata.obs_names = adata.obs[obs_id_column].astype(str).to_numpy()
    adata.obs_names = adata.obs_names.astype(str)
    if adata.obs_names.has_duplicates:
        raise InputError(src, "duplicate cell ids in obs")
    if not sp.issparse(adata.X):
        adata.X = sp.csr_matrix(adata.X)

    poly_src = polygons if isinstance(polygons, (str, Path)) else "<polygons>"
    if isinstance(polygons, gpd.GeoDataFrame):
        if id_column not in polygons.columns:
            raise InputError(poly_src, f"no {id_column!r} column")
        nuclei = gpd.GeoDataFrame(
            {X.CELL_ID: polygons[id_column].astype(str).to_numpy()},
            geometry=largest_polygon(np.asarray(polygons.geometry.values)),
        )
    else:
        nuclei = read_polygons(polygons, id_column=id_column)
    if units == "px":
        nuclei = nuclei.set_geometry(
            shapely.transform(nuclei.geometry.values, lambda c: c * pixel_size)
        )
    unknown = ~nuclei[X.CELL_ID].isin(adata.obs_names)
    if unknown.all():
        raise InputError(
            poly_src,
            f"no polygon id matches the AnnData obs names (e.g. {nuclei[X.CELL_ID].iloc[0]!r} "
            f"vs {adata.obs_names[0]!r})",
        )
    if unknown.any():
        raise InputError(
            poly_src,
            f"{int(unknown.sum())} polygon(s) belong to cells absent from {src.name} "
            f"(e.g. {nuclei[X.CELL_ID][unknown].iloc[0]!r})",
        )
    meta = {"polygons": str(poly_src), "units": units}
    return STBundle(adata, nuclei, None, float(pixel_size), src, meta)

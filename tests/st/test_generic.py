"""AnnData + polygon files (GeoParquet, GeoJSON, vertex CSV)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import shapely

from wsi_stnuc.errors import InputError
from wsi_stnuc.st.generic import largest_polygon, read_anndata_polygons


def _vertex_csv(bundle, path, scale=1.0):
    coords, idx = shapely.get_coordinates(
        shapely.get_exterior_ring(np.asarray(bundle.nuclei.geometry.values)), return_index=True
    )
    pd.DataFrame(
        {
            "cell_id": bundle.nuclei["cell_id"].to_numpy()[idx],
            "vertex_x": coords[:, 0] * scale,
            "vertex_y": coords[:, 1] * scale,
        }
    ).to_csv(path, index=False)


@pytest.mark.parametrize("fmt", ["parquet", "geojson", "csv"])
def test_formats_round_trip(bundle, tmp_path, fmt):
    h5ad = tmp_path / "cells.h5ad"
    bundle.adata.write_h5ad(h5ad)
    poly = tmp_path / f"nuclei.{fmt}"
    if fmt == "parquet":
        bundle.nuclei.to_parquet(poly)
    elif fmt == "geojson":
        bundle.nuclei.to_file(poly, driver="GeoJSON")
    else:
        _vertex_csv(bundle, poly)
    b = read_anndata_polygons(h5ad, poly)
    assert b.n_cells == bundle.n_cells
    assert list(b.nuclei["cell_id"]) == list(bundle.nuclei["cell_id"])
    np.testing.assert_allclose(b.nuclei.area, bundle.nuclei.area, rtol=1e-6)


def test_pixel_units_scaled(bundle, tmp_path):
    poly = tmp_path / "px.csv"
    _vertex_csv(bundle, poly, scale=1 / 0.5)  # written in 0.5 µm pixels
    b = read_anndata_polygons(bundle.adata, poly, units="px", pixel_size=0.5)
    np.testing.assert_allclose(b.nuclei.area, bundle.nuclei.area, rtol=1e-6)
    assert b.pixel_size == 0.5


def test_id_mismatch_and_missing(bundle, tmp_path):
    poly = tmp_path / "n.parquet"
    other = bundle.nuclei.copy()
    other["cell_id"] = "x" + other["cell_id"]
    other.to_parquet(poly)
    with pytest.raises(InputError, match="n.parquet.*no polygon id matches"):
        read_anndata_polygons(bundle.adata, poly)
    with pytest.raises(InputError, match="nope.geojson.*not found"):
        read_anndata_polygons(bundle.adata, tmp_path / "nope.geojson")
    with pytest.raises(InputError, match="units"):
        read_anndata_polygons(bundle.adata, bundle.nuclei, units="mm")


def test_largest_polygon_of_multipolygons():
    big, small = shapely.box(0, 0, 4, 4), shapely.box(10, 10, 11, 11)
    geoms = np.array([shapely.MultiPolygon([small, big]), small], dtype=object)
    out = largest_polygon(geoms)
    assert out[0].equals(big) and out[1].equals(small)

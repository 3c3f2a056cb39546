"""GeoParquet writers: metadata, streaming appender, atomicity."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely

from wsi_stnuc.export.geoparquet import (
    GeoParquetAppender,
    read_geoparquet_metadata,
    write_geoparquet,
)

META = {"slide": {"path": "/x/a.svs", "mpp": 0.5}, "classes": [{"name": "a", "color": [1, 2, 3]}]}


def _chunk(start: int, n: int) -> gpd.GeoDataFrame:
    xy = np.arange(start, start + n, dtype=float)
    return gpd.GeoDataFrame(
        {"nucleus_id": np.arange(start, start + n), "class_name": ["a"] * n, "v": xy / 2},
        geometry=shapely.buffer(shapely.points(xy, xy), 1.0),
    )


def test_write_and_metadata(tmp_path):
    gdf = _chunk(0, 10)
    path = write_geoparquet(gdf, tmp_path / "n.parquet", metadata=META)
    assert read_geoparquet_metadata(path) == META
    back = gpd.read_parquet(path)
    assert back.geometry.equals(gdf.geometry)
    assert list(back["nucleus_id"]) == list(range(10))


def test_appender_streams_row_groups(tmp_path):
    path = tmp_path / "n.parquet"
    with GeoParquetAppender(path, metadata=META) as out:
        out.append(_chunk(0, 5))
        out.append(_chunk(5, 0))
        out.append(_chunk(5, 7))
        assert not path.exists()
    assert out.n_rows == 12
    assert pq.ParquetFile(path).num_row_groups == 2
    assert read_geoparquet_metadata(path) == META
    back = gpd.read_parquet(path)
    assert list(back["nucleus_id"]) == list(range(12))


def test_appender_empty_and_failure(tmp_path):
    path = tmp_path / "e.parquet"
    with GeoParquetAppender(path, metadata=META) as out:
        out.append(_chunk(0, 0))
    assert len(gpd.read_parquet(path)) == 0
    assert read_geoparquet_metadata(path) == META
    failed = tmp_path / "f.parquet"
    with pytest.raises(RuntimeError), GeoParquetAppender(failed, metadata=META) as out:
        out.append(_chunk(0, 3))
        raise RuntimeError("boom")
    assert not failed.exists()
    assert not list(tmp_path.glob("*.partial"))

"""GeoParquet writers with our metadata (slide, model identity, classes) in the file footer.

The metadata is a JSON document under the parquet key-value key ``wsi_stnuc`` next to the
standard ``geo`` key, so any GeoParquet reader (geopandas, DuckDB, QGIS) opens the file and our
readers recover the context. :class:`GeoParquetAppender` writes one row group per appended
chunk, so a slide's nuclei are never all in memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import TracebackType

import geopandas as gpd
import pyarrow as pa
import pyarrow.parquet as pq
from geopandas.io.arrow import _geopandas_to_arrow

from wsi_stnuc.errors import InputError
from wsi_stnuc.io_utils import atomic_path

METADATA_KEY = b"wsi_stnuc"
_GEO_KEY = b"geo"


def _to_arrow(gdf: gpd.GeoDataFrame) -> pa.Table:
    # geopandas' own conversion writes the standard "geo" metadata (WKB, CRS, geometry types);
    # its public to_parquet cannot add extra key-value metadata, hence this helper.
    return _geopandas_to_arrow(gdf, index=False)


def _with_metadata(schema: pa.Schema, metadata: dict) -> pa.Schema:
    meta = dict(schema.metadata or {})
    meta[METADATA_KEY] = json.dumps(metadata, default=str).encode("utf-8")
    return schema.with_metadata(meta)


def write_geoparquet(
    gdf: gpd.GeoDataFrame, path: str | Path, *, metadata: dict, row_group_size: int = 100_000
) -> Path:
    """Write ``gdf`` as GeoParquet with ``metadata`` (JSON-able) under the ``wsi_stnuc`` key.

    Written atomically (to ``path.partial``, then renamed); returns ``path``.
    """
    path = Path(path)
    table = _to_arrow(gdf)
    table = table.replace_schema_metadata(_with_metadata(table.schema, metadata).metadata)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")
    return path


def read_geoparquet_metadata(path: str | Path) -> dict:
    """The ``wsi_stnuc`` metadata document of a GeoParquet file (``{}`` when absent)."""
    path = Path(path)
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(path, f"cannot read parquet footer ({exc})") from exc
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


class GeoParquetAppender:
    """Stream GeoDataFrame chunks into one GeoParquet file, one row group per chunk.

    The schema (and the ``geo`` metadata) come from the first non-empty chunk; later chunks are
    cast to it. The file appears under its final name only when the appender closes without an
    exception::

        with GeoParquetAppender(path, metadata=meta) as out:
            for gdf in chunks:
                out.append(gdf)
    """

    def __init__(self, path: str | Path, *, metadata: dict):
        self.path = Path(path)
        self.metadata = metadata
        self.n_rows = 0
        self._atomic = atomic_path(self.path)
        self._tmp: Path | None = None
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._empty: gpd.GeoDataFrame | None = None

    def __enter__(self) -> GeoParquetAppender:
        self._tmp = self._atomic.__enter__()
        return self

    def append(self, gdf: gpd.GeoDataFrame) -> None:
        """Write one chunk as a row group (empty chunks only remember the columns)."""
        if len(gdf) == 0:
            self._empty = gdf
            return
        table = _to_arrow(gdf)
        if self._writer is None:
            geo = json.loads(table.schema.metadata[_GEO_KEY])
            # the first chunk's bbox / geometry types do not describe the whole file
            for column in geo.get("columns", {}).values():
                column.pop("bbox", None)
                column["geometry_types"] = []
            schema = table.schema.with_metadata({_GEO_KEY: json.dumps(geo).encode()})
            self._schema = _with_metadata(schema, self.metadata)
            self._writer = pq.ParquetWriter(self._tmp, self._schema, compression="zstd")
        table = table.select(self._schema.names).cast(self._schema)
        self._writer.write_table(table)
        self.n_rows += len(table)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._writer is not None:
            self._writer.close()
        elif exc_type is None:
            empty = self._empty if self._empty is not None else gpd.GeoDataFrame(geometry=[])
            table = _to_arrow(empty)
            table = table.replace_schema_metadata(
                _with_metadata(table.schema, self.metadata).metadata
            )
            pq.write_table(table, self._tmp)
        if exc_type is not None and self._tmp is not None and self._tmp.exists():
            os.remove(self._tmp)
        self._atomic.__exit__(exc_type, exc, tb)

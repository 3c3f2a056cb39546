"""Tile grid over a slide at a model resolution, and a Dask stream of the tile images.

The grid follows docs/DESIGN.md ("Tile grid"): core boxes are half-open, gapless and cover the
whole slide; each tile is read with a halo so an instance owned by the core is never cut.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

from wsi_stnuc.slide.base import MppLike, SlideReader
from wsi_stnuc.slide.workers import cached_reader

GRID_COLUMNS = [
    "tile_id",
    "row",
    "col",
    "core_x0",
    "core_y0",
    "core_x1",
    "core_y1",
    "read_x0",
    "read_y0",
]


def tile_grid(
    slide: SlideReader,
    mpp: float,
    core: int = 512,
    halo: int = 64,
    tissue=None,
    min_tissue_fraction: float = 0.0,
) -> gpd.GeoDataFrame:
    """Tiles of ``core`` x ``core`` model pixels at ``mpp`` µm/px covering the slide.

    Columns: ``tile_id`` (= row * n_cols + col, stable under tissue filtering), ``row``,
    ``col``, level-0 core box ``core_x0, core_y0, core_x1, core_y1`` (half-open; the last row
    and column may reach past the slide edge), read origin ``read_x0, read_y0`` (core origin
    minus the halo) and ``geometry`` (the core box). ``attrs``: ``mpp, sx, sy, core_px,
    halo_px, read_px, n_rows, n_cols, slide_width, slide_height`` (level-0 px). With ``tissue`` (a level-0 shapely geometry) only tiles
    whose core overlaps it are kept, and with ``min_tissue_fraction > 0`` only those whose core
    is at least that fraction tissue.
    """
    if core <= 0 or halo < 0:
        raise ValueError(f"core must be positive and halo non-negative, got {core}, {halo}")
    mpp_x, mpp_y = slide.mpp
    sx, sy = mpp / mpp_x, mpp / mpp_y
    width, height = slide.dimensions
    cw, ch = core * sx, core * sy
    n_cols, n_rows = math.ceil(width / cw), math.ceil(height / ch)
    rows, cols = np.divmod(np.arange(n_rows * n_cols), n_cols)
    x0, y0 = cols * cw, rows * ch
    x1, y1 = (cols + 1) * cw, (rows + 1) * ch
    grid = gpd.GeoDataFrame(
        {
            "tile_id": rows * n_cols + cols,
            "row": rows,
            "col": cols,
            "core_x0": x0,
            "core_y0": y0,
            "core_x1": x1,
            "core_y1": y1,
            "read_x0": x0 - halo * sx,
            "read_y0": y0 - halo * sy,
        },
        geometry=shapely.box(x0, y0, x1, y1),
    )
    if tissue is not None and not shapely.is_empty(tissue):
        shapely.prepare(tissue)
        keep = shapely.intersects(tissue, grid.geometry.values)
        if min_tissue_fraction > 0:
            overlap = shapely.area(shapely.intersection(grid.geometry.values, tissue))
            keep &= overlap >= min_tissue_fraction * (cw * ch)
        grid = grid[keep].reset_index(drop=True)
    elif tissue is not None:
        grid = grid.iloc[:0]
    grid.attrs.update(
        mpp=float(mpp),
        sx=sx,
        sy=sy,
        core_px=int(core),
        halo_px=int(halo),
        read_px=int(core + 2 * halo),
        n_rows=int(n_rows),
        n_cols=int(n_cols),
        slide_width=int(width),
        slide_height=int(height),
    )
    return grid


def read_tile(
    path: str,
    mpp: MppLike,
    backend: str | None,
    x0: float,
    y0: float,
    size: int,
    sx: float,
    sy: float,
) -> np.ndarray:
    """One ``size x size`` tile from level-0 ``(x0, y0)`` at scale ``(sx, sy)``.

    Module-level with plain arguments so Dask can pickle it; the reader comes from this
    thread's cache.
    """
    return cached_reader(path, mpp, backend).read_scaled(x0, y0, size, size, sx, sy)


def _batches(grid: gpd.GeoDataFrame, size: int) -> Iterator[np.ndarray]:
    table = grid[["tile_id", "read_x0", "read_y0"]].to_numpy()
    for start in range(0, len(table), size):
        yield table[start : start + size]


def stream_tiles(
    slide_path: str | Path | SlideReader,
    grid: gpd.GeoDataFrame,
    *,
    mpp_override: MppLike = None,
    max_in_flight: int = 8,
    scheduler="threads",
    num_workers: int | None = None,
    backend: str | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(tile_id, read_px x read_px x 3 uint8)`` for every grid row, in grid order.

    Tiles are Dask tasks computed in batches of ``max_in_flight // 2``; the next batch is
    read while the caller consumes the current one, so at most ``max_in_flight`` tiles are in
    memory. ``scheduler`` is a Dask local scheduler name (``"threads"``, ``"processes"``,
    ``"sync"``) or a ``dask.distributed.Client``, for which tiles are submitted as a sliding
    window of futures. Readers open lazily in each worker, so nothing unpicklable travels.
    Passing an open SlideReader streams its file with its backend and mpp override.
    """
    if isinstance(slide_path, SlideReader):
        backend = backend or slide_path.backend
        mpp_override = mpp_override if mpp_override is not None else slide_path.mpp_override
        slide_path = slide_path.path
    path = str(slide_path)
    size, sx, sy = int(grid.attrs["read_px"]), float(grid.attrs["sx"]), float(grid.attrs["sy"])
    args = (path, mpp_override, backend)
    if hasattr(scheduler, "submit"):  # a dask.distributed Client
        yield from _stream_distributed(scheduler, grid, args, size, sx, sy, max_in_flight)
        return
    get, pool = _local_get(scheduler, num_workers)

    def compute(batch: np.ndarray) -> list[tuple[int, np.ndarray]]:
        # a raw task graph straight to the scheduler: dask.compute over delayed objects costs
        # 5-10 ms per call in graph optimisation, as much as decoding a batch of tiles
        graph = {
            ("tile", int(t)): (read_tile, *args, float(x0), float(y0), size, sx, sy)
            for t, x0, y0 in batch
        }
        images = get(graph, list(graph))
        return [(key[1], img) for key, img in zip(graph, images, strict=True)]

    # one driver thread runs the Dask compute of the next batch while this one is consumed
    try:
        with ThreadPoolExecutor(1) as driver:
            pending: deque[Future] = deque()
            batches = _batches(grid, max(1, max_in_flight // 2))
            for batch in batches:
                pending.append(driver.submit(compute, batch))
                if len(pending) == 2:
                    break
            while pending:
                done = pending.popleft().result()
                nxt = next(batches, None)
                if nxt is not None:
                    pending.append(driver.submit(compute, nxt))
                yield from done
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _local_get(scheduler: str, num_workers: int | None):
    """The Dask scheduler ``get`` for a local scheduler name, and a pool to shut down."""
    import dask.local
    import dask.multiprocessing
    import dask.threaded

    if scheduler in ("threads", "threading"):
        return functools.partial(dask.threaded.get, num_workers=num_workers), None
    if scheduler in ("sync", "synchronous", "single-threaded"):
        return dask.local.get_sync, None
    if scheduler in ("processes", "multiprocessing"):
        # one worker pool for the whole stream; dask would otherwise start one per batch
        pool = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"))
        return functools.partial(dask.multiprocessing.get, pool=pool), pool
    raise ValueError(f"unknown scheduler {scheduler!r}: threads, processes, sync or a Client")


def _stream_distributed(client, grid, args, size, sx, sy, max_in_flight):
    table = grid[["tile_id", "read_x0", "read_y0"]].to_numpy()
    window: deque = deque()
    for tile_id, x0, y0 in table:
        future = client.submit(read_tile, *args, float(x0), float(y0), size, sx, sy, pure=False)
        window.append((int(tile_id), future))
        if len(window) >= max_in_flight:
            tid, fut = window.popleft()
            yield tid, fut.result()
    while window:
        tid, fut = window.popleft()
        yield tid, fut.result()

"""Per-thread slide readers for parallel tasks (Dask threads, processes or distributed).

Tasks carry only ``(path, mpp, backend)``, which pickles; each worker thread opens its own
reader on first use and keeps the few most recent ones, so no file handle is shared between
threads or shipped between processes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from wsi_stnuc.slide.base import MppLike, SlideReader
from wsi_stnuc.slide.registry import open_slide

# readers kept open per thread; a cohort run touches one slide at a time, so a handful suffices
MAX_READERS_PER_THREAD = 4

_local = threading.local()


def _freeze(mpp: MppLike):
    return tuple(mpp) if isinstance(mpp, tuple | list) else mpp


def cached_reader(path: str | Path, mpp: MppLike = None, backend: str | None = None) -> SlideReader:
    """This thread's reader for ``path`` (opened on first use; least recently used closed)."""
    cache: OrderedDict = getattr(_local, "readers", None)
    if cache is None:
        cache = _local.readers = OrderedDict()
    key = (str(Path(path).resolve()), _freeze(mpp), backend)
    reader = cache.get(key)
    if reader is None:
        reader = open_slide(path, mpp=mpp, backend=backend)
        cache[key] = reader
        while len(cache) > MAX_READERS_PER_THREAD:
            cache.popitem(last=False)[1].close()
    cache.move_to_end(key)
    return reader


def close_thread_readers() -> None:
    """Close this thread's cached readers (e.g. at the end of a worker's job)."""
    cache = getattr(_local, "readers", None)
    while cache:
        cache.popitem()[1].close()

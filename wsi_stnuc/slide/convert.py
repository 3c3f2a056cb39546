"""Convert any readable slide to an OME-Zarr (NGFF 0.4, zarr v2) multiscale pyramid.

Level 0 is read block by block from the source with Dask (one reader per worker thread);
every further level is the 2x2 mean of the level just written, read back from the zarr, so
the source is decoded once and memory stays at a few chunks per thread.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from wsi_stnuc.errors import InputError
from wsi_stnuc.io_utils import atomic_path
from wsi_stnuc.progress import bar_disable
from wsi_stnuc.slide.base import SlideReader
from wsi_stnuc.slide.registry import open_slide
from wsi_stnuc.slide.workers import cached_reader
from wsi_stnuc.slide.zarr_reader import WSI_STNUC_ATTR

log = logging.getLogger(__name__)

NGFF_VERSION = "0.4"
_CHANNELS = [("Red", "FF0000"), ("Green", "00FF00"), ("Blue", "0000FF")]


def _read_block(path: str, mpp, backend: str, block_info=None) -> np.ndarray:
    (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
    return cached_reader(path, mpp, backend).read_level(0, x0, y0, x1 - x0, y1 - y0)


def _level0(slide: SlideReader, chunk: int) -> da.Array:
    width, height = slide.dimensions
    yxc = da.map_blocks(
        _read_block,
        str(slide.path),
        slide.mpp_override,
        slide.backend,
        chunks=(da.core.normalize_chunks(chunk, (height,))[0],)
        + (da.core.normalize_chunks(chunk, (width,))[0], (3,)),
        dtype=np.uint8,
    )
    return yxc.transpose(2, 0, 1)


def _halve(level: da.Array, chunk: int) -> da.Array:
    mean = da.coarsen(np.mean, level.astype(np.float32), {1: 2, 2: 2}, trim_excess=True)
    return da.round(mean).astype(np.uint8).rechunk((3, chunk, chunk))


def _ngff_attrs(slide: SlideReader, n_levels: int, mpp: tuple[float, float] | None) -> dict:
    unit = {"unit": "micrometer"} if mpp else {}
    px, py = mpp if mpp else (1.0, 1.0)
    datasets = [
        {
            "path": str(k),
            "coordinateTransformations": [{"type": "scale", "scale": [1.0, py * 2**k, px * 2**k]}],
        }
        for k in range(n_levels)
    ]
    return {
        "multiscales": [
            {
                "version": NGFF_VERSION,
                "name": slide.path.name,
                "axes": [
                    {"name": "c", "type": "channel"},
                    {"name": "y", "type": "space", **unit},
                    {"name": "x", "type": "space", **unit},
                ],
                "datasets": datasets,
                "type": "mean",
            }
        ],
        "omero": {
            "version": NGFF_VERSION,
            "rdefs": {"model": "color"},
            "channels": [
                {
                    "label": name,
                    "color": color,
                    "active": True,
                    "window": {"start": 0, "end": 255, "min": 0, "max": 255},
                }
                for name, color in _CHANNELS
            ],
        },
        WSI_STNUC_ATTR: {
            "source": str(slide.path),
            "source_backend": slide.backend,
            "vendor": slide.vendor,
            "objective_power": slide.objective_power,
        },
    }


def convert_to_ome_zarr(
    slide: SlideReader | str | Path,
    out: str | Path,
    *,
    chunk: int = 512,
    min_size: int = 512,
    compression_level: int = 5,
    num_workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write ``slide`` as an OME-Zarr pyramid at ``out`` (a ``.zarr`` folder); returns ``out``.

    Axes ``c, y, x``; chunks ``3 x chunk x chunk``, Blosc-zstd compressed; levels halve until
    the longer side is at most ``min_size``. The slide's mpp (if known, or overridden) goes
    into the scale transforms in micrometres. Written to ``out.partial`` and renamed.
    """
    import numcodecs
    import zarr
    from tqdm.dask import TqdmCallback

    if not isinstance(slide, SlideReader):
        slide = open_slide(slide)
    out = Path(out)
    if out.exists():
        raise InputError(out, "output already exists; remove it or choose another path")
    try:
        mpp = slide.mpp
    except InputError:
        log.warning("%s has no mpp; writing the pyramid without physical units", slide.path)
        mpp = None
    compressor = numcodecs.Blosc(
        cname="zstd", clevel=compression_level, shuffle=numcodecs.Blosc.BITSHUFFLE
    )
    with atomic_path(out) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        level = _level0(slide, chunk)
        k = 0
        while True:
            array = root.create_array(
                str(k),
                shape=level.shape,
                dtype=np.uint8,
                chunks=(3, chunk, chunk),
                compressors=compressor,
                chunk_key_encoding={"name": "v2", "separator": "/"},
                fill_value=255,
            )
            with (
                dask.config.set(num_workers=num_workers),
                TqdmCallback(
                    desc=f"level {k} {level.shape[2]}x{level.shape[1]}", disable=bar_disable(progress)
                ),
            ):
                da.store(level, array, lock=False, scheduler="threads")
            k += 1
            if max(level.shape[1:]) <= min_size or min(level.shape[1:]) < 2:
                break
            level = _halve(da.from_zarr(array), chunk)
        root.attrs.update(_ngff_attrs(slide, k, mpp))
    return out

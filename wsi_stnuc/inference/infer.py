"""Whole-slide inference: tiles -> network -> instances -> ownership stitching -> NucleusTable.

Pipeline for one slide (all stages overlap):

1. the tile grid at the model's resolution (only tiles touching tissue), read ahead by
   :func:`wsi_stnuc.slide.tiling.stream_tiles` in reader threads;
2. the batched forward pass on the calling thread (GPU or CPU);
3. post-processing (heads -> instances), ownership stitching and per-nucleus features in a
   thread pool while the next batch runs through the network;
4. each batch's nuclei are written atomically to ``OUT/NAME.parts/batch-NNNNNN.parquet``. A
   part's existence is the done-list: a killed run resumes at the first missing batch. Batches
   are fixed blocks of the tile grid (not "the next N unfinished tiles"), so a resumed run
   computes exactly the batches an uninterrupted run would, and its output is identical;
5. the parts are streamed, in tile order, into ``OUT/NAME.parquet`` (GeoParquet, nucleus ids
   ``1..N`` in tile order, with slide / model / class metadata) and ``OUT/NAME.geojson`` (or
   ``.geojson.zip``) for QuPath, then ``OUT/NAME.summary.json`` marks the slide finished.

One run at a time writes a slide: ``OUT/NAME.lock`` (``inference.lock``) is held from the
resume check to the last write. Finished and partial results are reused only for the same
slide file (``inference.identity.SlideIdentity``), model and settings (a hash of them, kept in
``summary.json`` and in the parts' ``run.json``); anything else is recomputed, and the log
says why. A name that holds another slide's results is refused, never overwritten.

The model is a :class:`Segmenter`: ``forward(images NHWC uint8) -> per-image raw outputs`` and
``postprocess(raw) -> (inst, info DataFrame)``. Any plain callable returning
``[(inst, info), ...]`` works too (tests use an oracle that returns known labels).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import shapely
from tqdm.auto import tqdm

from wsi_stnuc.classes import UNKNOWN, ClassTable
from wsi_stnuc.errors import InputError
from wsi_stnuc.export.geoparquet import GeoParquetAppender, write_geoparquet
from wsi_stnuc.export.qupath import expand_nuclei_to_cells, write_qupath_geojson
from wsi_stnuc.formats import LabelCols, NucleusCols, QuPath
from wsi_stnuc.inference.features import FEATURE_COLUMNS, nucleus_features
from wsi_stnuc.inference.identity import SlideIdentity, settings_diff, settings_key
from wsi_stnuc.inference.lock import LOCK_SUFFIX, locked
from wsi_stnuc.inference.overview import write_slide_overview
from wsi_stnuc.inference.segmenter import (  # noqa: F401 - re-exported, the public names here
    InstanceResult,
    Segmenter,
    SizeGuards,
    as_segmenter,
    checkpoint_segmenter,
    model_tag,
    size_guards,
)
from wsi_stnuc.inference.stitch import stitch_tile
from wsi_stnuc.io_utils import atomic_path
from wsi_stnuc.progress import bar_disable

log = logging.getLogger(__name__)

#: Above this many nuclei the QuPath file is zipped unless the caller says otherwise.
ZIP_ABOVE_NUCLEI = 200_000
#: QuPath's default cell expansion (µm) for ``qupath_cells``.
CELL_EXPANSION_UM = 5.0
RUN_FILE = "run.json"
# tile-local columns that mean nothing in the slide table
_TILE_LOCAL = ("label", "area_px")


@dataclass
class SlideResult:
    """What :func:`infer_slide` produced for one slide."""

    name: str
    slide_path: str
    parquet: str
    geojson: str | None
    n_nuclei: int
    class_counts: dict[str, int]
    tissue_area_mm2: float
    seconds: float
    n_tiles: int
    model_tag: int
    classes: list[dict]
    slide: dict = field(default_factory=dict)  # SlideIdentity.to_dict()
    settings_key: str = ""
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SlideResult:
        """From ``to_dict()`` output, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def slide_outputs(out_dir: Path, name: str) -> dict[str, Path]:
    """Where :func:`infer_slide` writes the outputs of slide ``name``."""
    return {
        "parquet": out_dir / f"{name}.parquet",
        "geojson": out_dir / f"{name}.geojson",
        "geojson_zip": out_dir / f"{name}.geojson.zip",
        "summary": out_dir / f"{name}.summary.json",
        "parts": out_dir / f"{name}.parts",
        "lock": out_dir / f"{name}{LOCK_SUFFIX}",
    }


def _class_names(classes: ClassTable, class_ids: np.ndarray) -> np.ndarray:
    lookup = np.array([UNKNOWN, *classes.names, UNKNOWN], dtype=object)
    ids = np.asarray(class_ids, dtype=np.int64)
    return lookup[np.where((ids >= 1) & (ids <= classes.n_classes), ids, len(lookup) - 1)]


def _named_probs(classes: ClassTable) -> dict[str, str]:
    """``prob_<k>`` -> ``prob_<class name>`` (the LabelSet's names, ``LabelCols.class_probs``)."""
    names = LabelCols.class_probs(classes.names)
    return {f"{NucleusCols.PROB_PREFIX}{k + 1}": name for k, name in enumerate(names)}


def _tile_nuclei(
    raw: Any,
    image: np.ndarray,
    tile_row: pd.Series,
    attrs: dict,
    seg: Segmenter,
    slide_mpp: tuple[float, float],
) -> gpd.GeoDataFrame:
    inst, info = seg.postprocess(raw) if seg.postprocess else raw
    if "label" not in info.columns:
        raise ValueError("segmenter info table has no 'label' column")
    gdf = stitch_tile(inst, info, tile_row, attrs, area_px=tuple(attrs["area_px"]))
    if len(gdf) == 0:
        return gdf
    labels = gdf["label"].to_numpy()
    feats = nucleus_features(
        gdf.geometry.to_numpy(), inst, labels, image,
        slide_mpp=slide_mpp, scale=(attrs["sx"], attrs["sy"]),
    )  # fmt: skip
    # one frame from a column dict (same column order as assigning them one by one): each
    # GeoDataFrame column assignment costs about as much as a tile's features
    # the segmenter numbers its class probabilities (prob_1..prob_K); the table names them
    named = _named_probs(seg.classes)
    cols: dict[str, Any] = {named.get(c, c): gdf[c] for c in gdf.columns if c not in _TILE_LOCAL}
    cols.setdefault(NucleusCols.CLASS_ID, np.zeros(len(gdf), np.int64))
    cols[NucleusCols.CLASS_NAME] = _class_names(seg.classes, cols[NucleusCols.CLASS_ID])
    for col in feats.columns:
        cols[col] = feats[col].to_numpy()
    return gpd.GeoDataFrame(cols, index=gdf.index, geometry=gdf.geometry.name, crs=gdf.crs)


def _finish_batch(
    part: Path,
    raws: Sequence[Any],
    images: np.ndarray,
    rows: pd.DataFrame,
    attrs: dict,
    seg: Segmenter,
    slide_mpp: tuple[float, float],
    elapsed: Callable[[], float],
) -> int:
    frames = [
        _tile_nuclei(raw, images[i], rows.iloc[i], attrs, seg, slide_mpp)
        for i, raw in enumerate(raws)
    ]
    frames = [f for f in frames if len(f)]
    gdf = pd.concat(frames, ignore_index=True) if frames else gpd.GeoDataFrame(geometry=[])
    # the run's time so far travels with each part, so a resumed slide's seconds count the
    # earlier runs up to their last saved batch
    meta = {"tiles": rows["tile_id"].tolist(), "elapsed": elapsed()}
    write_geoparquet(gpd.GeoDataFrame(gdf), part, metadata=meta)
    return len(gdf)


def _parts_config(identity: SlideIdentity, key: str, grid: gpd.GeoDataFrame,
                  batch_size: int) -> dict:  # fmt: skip
    """What the parts of a partial run depend on: the result key plus the batch layout."""
    return {
        "slide": identity.to_dict(),
        "settings_key": key,
        "n_tiles": len(grid),
        "tile_ids_sha": hashlib.sha256(grid["tile_id"].to_numpy().tobytes()).hexdigest(),
        "batch_size": batch_size,
    }


def _done_parts(parts: Path) -> tuple[set[int], float]:
    """Indices of the finished batches and the run time recorded by the latest of them."""
    from wsi_stnuc.export.geoparquet import read_geoparquet_metadata

    done, elapsed = set(), 0.0
    for path in parts.glob("batch-*.parquet"):
        done.add(int(path.stem.split("-")[1]))
        elapsed = max(elapsed, float(read_geoparquet_metadata(path).get("elapsed", 0.0)))
    return done, elapsed


def _prepare_parts(parts: Path, config: dict, resume: bool) -> tuple[set[int], float]:
    """Batches already done and their run time; starts over when not resuming or when the
    slide, model, settings or batch layout changed (and says which)."""
    run_file = parts / RUN_FILE
    if resume and run_file.is_file():
        try:
            old = json.loads(run_file.read_text())
        except (OSError, ValueError):
            old = {}
        if old == json.loads(json.dumps(config, default=str)):
            done, elapsed = _done_parts(parts)
            log.info("%s: resuming, %d batches already done", parts, len(done))
            return done, elapsed
        log.warning("%s: the partial run differs in %s; starting over", parts,
                    ", ".join(settings_diff(old, config)))  # fmt: skip
    if parts.exists():
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    with atomic_path(run_file) as tmp:
        tmp.write_text(json.dumps(config, default=str, indent=1))
    return set(), 0.0


READERS = ("threads", "processes")


def _reader_scheduler(reader: str) -> str:
    """The tile-reading scheduler to use for ``reader``, checked."""
    import multiprocessing

    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    if reader == "processes" and multiprocessing.current_process().daemon:
        log.warning("tile reading in processes is not possible in a daemonic process "
                    "(e.g. a Dask worker); reading in threads")  # fmt: skip
        return "threads"
    return reader


def _batches(grid: gpd.GeoDataFrame, batch_size: int) -> list[pd.DataFrame]:
    return [grid.iloc[i : i + batch_size] for i in range(0, len(grid), batch_size)]


def _run_batches(
    slide,
    grid: gpd.GeoDataFrame,
    seg: Segmenter,
    parts: Path,
    done: set[int],
    *,
    batch_size: int,
    workers: int,
    progress: bool,
    label: str,
    reader: str = "threads",
    elapsed: Callable[[], float] = lambda: 0.0,
) -> None:
    batches = _batches(grid, batch_size)
    todo = [b for b in range(len(batches)) if b not in done]
    if not todo:
        return
    from wsi_stnuc.slide.tiling import stream_tiles

    todo_grid = pd.concat([batches[b] for b in todo])
    todo_grid = gpd.GeoDataFrame(todo_grid)
    todo_grid.attrs.update(grid.attrs)
    stream = stream_tiles(slide, todo_grid, max_in_flight=2 * batch_size, num_workers=workers,
                          scheduler=reader)  # fmt: skip
    attrs, slide_mpp = dict(grid.attrs), tuple(slide.mpp)
    bar = tqdm(total=len(todo_grid), desc=label, unit="tile", disable=bar_disable(progress), leave=False)
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        try:
            for b in todo:
                rows = batches[b]
                images = _take(stream, rows["tile_id"].to_numpy())
                raws = seg.forward(images)
                if len(raws) != len(rows):
                    raise ValueError(f"model returned {len(raws)} results for {len(rows)} tiles")
                part = parts / f"batch-{b:06d}.parquet"
                pending.append(
                    pool.submit(_finish_batch, part, raws, images, rows, attrs, seg, slide_mpp,
                                elapsed)  # fmt: skip
                )
                # bound the memory held by finished-but-unwritten batches
                while len(pending) > workers:
                    pending.popleft().result()
                bar.update(len(rows))
            while pending:
                pending.popleft().result()
        finally:
            bar.close()
            stream.close()


def _take(stream: Iterator[tuple[int, np.ndarray]], tile_ids: np.ndarray) -> np.ndarray:
    images = []
    for expected in tile_ids:
        tile_id, image = next(stream)
        if tile_id != expected:
            raise RuntimeError(f"tile stream out of order: got {tile_id}, expected {expected}")
        images.append(image)
    return np.stack(images)


def _read_parts(parts: Path, n_batches: int) -> Iterator[gpd.GeoDataFrame]:
    for b in range(n_batches):
        path = parts / f"batch-{b:06d}.parquet"
        if not path.is_file():
            raise RuntimeError(f"{path}: batch missing after the run")
        gdf = gpd.read_parquet(path)
        if len(gdf):
            yield gdf


def _iter_parquet(path: Path) -> Iterator[gpd.GeoDataFrame]:
    """A GeoParquet file one row group at a time (bounded memory)."""
    pf = pq.ParquetFile(path)
    for i in range(pf.num_row_groups):
        df = pf.read_row_group(i).to_pandas()
        geom = shapely.from_wkb(df.pop("geometry").to_numpy())
        yield gpd.GeoDataFrame(df, geometry=gpd.GeoSeries(geom, index=df.index))


def _with_cells(frames: Iterator[gpd.GeoDataFrame], path: Path, distance: float):
    """Turn nucleus chunks into cell chunks (cell polygon + ``nucleus_geometry``)."""
    table = pq.read_table(path, columns=[NucleusCols.CENTROID_X, NucleusCols.CENTROID_Y])
    all_c = np.stack([table.column(0).to_numpy(), table.column(1).to_numpy()], axis=1)
    start = 0
    for frame in frames:
        c = frame[[NucleusCols.CENTROID_X, NucleusCols.CENTROID_Y]].to_numpy()
        stop = start + len(frame)
        lo, hi = c.min(axis=0) - 3 * distance - 200, c.max(axis=0) + 3 * distance + 200
        near = np.all((all_c >= lo) & (all_c <= hi), axis=1)
        near[start:stop] = False
        cells = expand_nuclei_to_cells(frame.geometry.to_numpy(), c, distance, context=all_c[near])
        out = frame.copy()
        out["nucleus_geometry"] = frame.geometry.to_numpy()
        yield out.set_geometry(gpd.GeoSeries(cells, index=frame.index))
        start = stop


def _empty_table(classes: ClassTable) -> gpd.GeoDataFrame:
    """A NucleusTable with no rows but every column, typed."""
    cols: dict[str, type] = {
        NucleusCols.NUCLEUS_ID: np.int64,
        NucleusCols.TILE_ID: np.int64,
        NucleusCols.CENTROID_X: np.float64,
        NucleusCols.CENTROID_Y: np.float64,
        NucleusCols.CLASS_ID: np.int32,
        NucleusCols.DET_PROB: np.float32,
    }
    cols.update({name: np.float32 for name in LabelCols.class_probs(classes.names)})
    cols.update({c: np.float64 for c in FEATURE_COLUMNS})
    frame = pd.DataFrame({c: np.zeros(0, t) for c, t in cols.items()})
    frame[NucleusCols.CLASS_NAME] = np.zeros(0, dtype=object)
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries([], dtype="geometry"))


def _tissue(slide, tissue: bool):
    """Tissue geometry (level-0) and its area in mm² (whole slide when ``tissue`` is off)."""
    mpp_x, mpp_y = slide.mpp
    if tissue:
        from wsi_stnuc.slide.tissue import detect_tissue

        geom = detect_tissue(slide)
        return geom, float(shapely.area(geom)) * mpp_x * mpp_y / 1e6
    width, height = slide.dimensions
    return None, width * height * mpp_x * mpp_y / 1e6


def _settings(seg: Segmenter, slide, guards: SizeGuards, core: int, tissue: bool,
              export: dict) -> dict:  # fmt: skip
    """Everything a finished slide's results depend on, besides the slide file itself."""
    return {
        "model": seg.identity,
        "model_mpp": seg.mpp,
        "classes": seg.classes.to_dict(),
        "slide_mpp": list(slide.mpp),
        "mpp_source": slide.mpp_source,
        "dimensions": list(slide.dimensions),
        "core_px": int(core),
        "halo_px": guards.halo_px,
        "min_area_um2": guards.min_area_um2,
        "max_area_um2": guards.max_area_um2,
        "tissue": bool(tissue),
        "export": export,
    }


def _metadata(slide, seg: Segmenter, grid: gpd.GeoDataFrame, tissue_mm2: float,
              identity: SlideIdentity, settings: dict) -> dict:  # fmt: skip
    return {
        "slide": {
            "path": str(slide.path),
            "identity": identity.to_dict(),
            "dimensions": list(slide.dimensions),
            "mpp": list(slide.mpp),
            # "forced": --force-mpp replaced the file's own µm/px; "filled": the file had none
            "mpp_source": slide.mpp_source,
            "native_mpp": None if slide.native_mpp is None else list(slide.native_mpp),
            "vendor": slide.vendor,
            "backend": slide.backend,
        },
        "model": {**seg.identity, "mpp": seg.mpp},
        "classes": seg.classes.to_dict(),
        "tiling": {k: v for k, v in grid.attrs.items()},
        "size_guards_um2": [settings["min_area_um2"], settings["max_area_um2"]],
        "settings_key": settings_key({"slide": identity.to_dict(), **settings}),
        "tissue_area_mm2": tissue_mm2,
        "coordinates": "slide level-0 pixels, x right, y down, origin top-left pixel corner",
    }


def _reusable(paths: dict[str, Path], identity: SlideIdentity, key: str) -> SlideResult | None:
    """The finished result of this slide, model and settings, or None (logging why not)."""
    try:
        result = SlideResult.from_dict(json.loads(paths["summary"].read_text()))
    except (OSError, ValueError, TypeError) as exc:
        log.warning("%s: unreadable, recomputing the slide (%s)", paths["summary"], exc)
        return None
    why = identity.differs(result.slide)
    if why is None and result.settings_key != key:
        why = "made with another model or other settings"
    if why is None and not Path(result.parquet).is_file():
        why = f"{result.parquet} is missing"
    if why is not None:
        log.warning("%s: finished result not reused: %s; recomputing", paths["summary"], why)
        return None
    return result


def _check_name_free(paths: dict[str, Path], name: str, identity: SlideIdentity) -> None:
    """Refuse to write over the results of another slide file kept under ``name``."""
    for record in (paths["summary"], paths["parts"] / RUN_FILE):
        try:
            other = json.loads(record.read_text()).get("slide") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if other.get("path") not in (None, identity.path):
            raise InputError(
                record, f"output name {name!r} already holds the results of {other['path']}; "
                "give this slide another name (manifest 'name' column) or another --out"
            )  # fmt: skip


def _write_outputs(paths, name: str, seg: Segmenter, meta: dict, n_batches: int, mpp_x: float,
                   export: dict) -> tuple[int, dict[str, int], Path | None]:  # fmt: skip
    """The parts, in tile order, into NAME.parquet and the QuPath file."""
    counts: dict[str, int] = {}
    n = 0
    with GeoParquetAppender(paths["parquet"], metadata=meta) as out:
        out.append(_empty_table(seg.classes))  # the schema, should the slide have no nuclei
        for gdf in _read_parts(paths["parts"], n_batches):
            gdf.insert(0, NucleusCols.NUCLEUS_ID, np.arange(n + 1, n + 1 + len(gdf)))
            n += len(gdf)
            for k, v in gdf[NucleusCols.CLASS_NAME].value_counts().items():
                counts[str(k)] = counts.get(str(k), 0) + int(v)
            out.append(gdf)
    if not export["qupath"]:
        return n, counts, None
    zipped = n > ZIP_ABOVE_NUCLEI if export["qupath_zip"] is None else export["qupath_zip"]
    geojson = paths["geojson_zip"] if zipped else paths["geojson"]
    stale = paths["geojson"] if zipped else paths["geojson_zip"]
    stale.unlink(missing_ok=True)
    frames: Iterator[gpd.GeoDataFrame] = _iter_parquet(paths["parquet"])
    if export["qupath_cells"]:
        frames = _with_cells(frames, paths["parquet"], CELL_EXPANSION_UM / mpp_x)
    tag = model_tag(seg.identity)
    frames = (f.assign(**{QuPath.MODEL_TAG: tag}) for f in frames)
    write_qupath_geojson(
        frames,
        geojson,
        classes=seg.classes,
        uuid_key=f"{name}|{seg.identity.get('sha256', seg.identity.get('name', ''))}",
        nucleus_geometry_column="nucleus_geometry" if export["qupath_cells"] else None,
    )
    return n, counts, geojson


def infer_slide(
    model: str | Path | Segmenter,
    slide_path: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    mpp: float | None = None,
    force_mpp: float | None = None,
    core: int = 512,
    halo: int | None = None,
    min_area_um2: float | None = None,
    max_area_um2: float | None = None,
    batch_size: int = 8,
    device: str = "auto",
    tissue: bool = True,
    resume: bool = True,
    workers: int | None = None,
    reader: str = "threads",
    qupath: bool = True,
    qupath_zip: bool | None = None,
    qupath_cells: bool = False,
    progress: bool = True,
) -> SlideResult:
    """Segment and classify every nucleus of one slide; write GeoParquet (+ QuPath GeoJSON).

    ``model`` is a checkpoint path or a :class:`Segmenter`. Tiles of ``core`` model pixels
    with a ``halo`` (model px; default: the smallest that holds a nucleus of the maximum area)
    are read at the model's mpp. ``mpp`` is the slide's µm/px where the file states none;
    ``force_mpp`` replaces the file's own (the metadata says so). ``min_area_um2`` /
    ``max_area_um2`` override the model's nucleus size guards. ``tissue`` restricts the grid
    to detected tissue. With ``resume`` a finished slide is skipped and a partial one
    continues where it stopped, both only if made from the same slide file, model and
    settings. ``qupath_zip`` (default: above :data:`ZIP_ABOVE_NUCLEI` nuclei) zips the GeoJSON;
    ``qupath_cells`` exports cell objects (nuclei grown by 5 µm within their Voronoi regions).
    Outputs are named after ``name`` (default: the slide file stem). ``reader``: tiles are
    decoded and resampled in ``workers`` ``"threads"`` (default) or ``"processes"`` (outside
    this interpreter's lock, for many-core GPU machines where the reads compete with
    post-processing; a daemonic process, e.g. a Dask worker, cannot start them and falls
    back to threads). The output is the same either way. Another run writing the same
    outputs raises :class:`~wsi_stnuc.inference.lock.LockHeld`.
    """
    from wsi_stnuc.slide.registry import open_slide

    t0 = time.perf_counter()
    out_dir, slide_path = Path(out_dir), Path(slide_path)
    name = name or slide_path.name.split(".")[0]
    paths = slide_outputs(out_dir, name)
    workers = workers or min(4, os.cpu_count() or 1)
    reader = _reader_scheduler(reader)
    seg = as_segmenter(model, device, batch_size)
    guards = size_guards(seg, halo, min_area_um2, max_area_um2)
    export = {"qupath": qupath, "qupath_zip": qupath_zip, "qupath_cells": qupath_cells}
    with open_slide(slide_path, mpp=force_mpp, default_mpp=mpp) as slide:
        slide.mpp  # noqa: B018 - raises InputError early for a slide without mpp
        identity = SlideIdentity.of(slide_path)
        settings = _settings(seg, slide, guards, core, tissue, export)
        key = settings_key({"slide": identity.to_dict(), **settings})
        with locked(paths["lock"]):
            if resume and paths["summary"].is_file():
                done = _reusable(paths, identity, key)
                if done is not None:
                    log.info("%s: already finished, skipping", name)
                    shutil.rmtree(paths["parts"], ignore_errors=True)  # left by a kill
                    return done
            _check_name_free(paths, name, identity)
            try:
                return _infer_locked(
                    slide, seg, paths, name, identity, settings, key, guards, t0,
                    core=core, batch_size=batch_size, tissue=tissue, resume=resume,
                    workers=workers, reader=reader, progress=progress, export=export,
                )  # fmt: skip
            except Exception:
                # a failed slide leaves nothing behind; an interrupt (not an Exception) keeps
                # the parts for --resume
                shutil.rmtree(paths["parts"], ignore_errors=True)
                raise


def _infer_locked(slide, seg: Segmenter, paths: dict[str, Path], name: str,
                  identity: SlideIdentity, settings: dict, key: str, guards: SizeGuards,
                  t0: float, *, core: int, batch_size: int, tissue: bool, resume: bool,
                  workers: int, reader: str, progress: bool, export: dict) -> SlideResult:  # fmt: skip
    """:func:`infer_slide` once the slide is open and its lock held."""
    from wsi_stnuc.slide.tiling import tile_grid

    tissue_geom, tissue_mm2 = _tissue(slide, tissue)
    grid = tile_grid(slide, seg.mpp, core=core, halo=guards.halo_px, tissue=tissue_geom)
    grid.attrs["area_px"] = list(guards.area_px)
    config = _parts_config(identity, key, grid, batch_size)
    done, before = _prepare_parts(paths["parts"], config, resume)

    def elapsed() -> float:
        return before + time.perf_counter() - t0

    _run_batches(
        slide, grid, seg, paths["parts"], done,
        batch_size=batch_size, workers=workers, progress=progress, label=name,
        reader=reader, elapsed=elapsed,
    )  # fmt: skip
    meta = _metadata(slide, seg, grid, tissue_mm2, identity, settings)
    n_batches = len(_batches(grid, batch_size))
    n, counts, geojson = _write_outputs(paths, name, seg, meta, n_batches, slide.mpp[0], export)
    result = SlideResult(
        name=name,
        slide_path=identity.path,  # resolved; groovy/import_wsi_stnuc.groovy matches on it
        parquet=str(paths["parquet"]),
        geojson=None if geojson is None else str(geojson),
        n_nuclei=n,
        class_counts=dict(sorted(counts.items())),
        tissue_area_mm2=tissue_mm2,
        seconds=elapsed(),
        n_tiles=len(grid),
        model_tag=model_tag(seg.identity),
        classes=seg.classes.to_dict(),
        slide=identity.to_dict(),
        settings_key=key,
        settings=settings,
    )
    with atomic_path(paths["summary"]) as tmp:
        tmp.write_text(json.dumps(result.to_dict(), indent=1, default=str))
    shutil.rmtree(paths["parts"], ignore_errors=True)
    write_slide_overview(result, slide)
    log.info("%s: %d nuclei in %.1f s", name, n, result.seconds)
    return result

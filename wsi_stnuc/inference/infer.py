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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import shapely
from tqdm.auto import tqdm

from wsi_stnuc.classes import UNKNOWN, ClassTable
from wsi_stnuc.export.geoparquet import GeoParquetAppender, write_geoparquet
from wsi_stnuc.export.qupath import expand_nuclei_to_cells, write_qupath_geojson
from wsi_stnuc.formats import NucleusCols, QuPath
from wsi_stnuc.inference.features import FEATURE_COLUMNS, nucleus_features
from wsi_stnuc.inference.overview import write_slide_overview
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

InstanceResult = tuple[np.ndarray, pd.DataFrame]


@dataclass
class Segmenter:
    """A nucleus model for :func:`infer_slide`.

    ``forward`` maps a uint8 batch ``N x H x W x 3`` to N raw outputs; ``postprocess`` turns
    one raw output into ``(inst, info)`` (see ``model.postprocess.heads_to_instances``) and
    runs in worker threads, overlapping the next forward. ``mpp`` is the model's µm/px,
    ``classes`` its class table, ``identity`` what goes into the output metadata (and decides
    whether partial results may be resumed).
    """

    forward: Callable[[np.ndarray], Sequence[Any]]
    mpp: float
    classes: ClassTable
    postprocess: Callable[[Any], InstanceResult] | None = None
    identity: dict = field(default_factory=dict)

    def __call__(self, images: np.ndarray) -> list[InstanceResult]:
        raw = self.forward(images)
        return [self.postprocess(r) if self.postprocess else r for r in raw]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_segmenter(
    path: str | Path, device: str = "auto", *, batch_size: int = 8, **postprocess_kwargs
) -> Segmenter:
    """A :class:`Segmenter` from a wsi-stnuc checkpoint (``NucleiNet`` + HoVer post-processing).

    ``postprocess_kwargs`` go to ``heads_to_instances`` (thresholds, minimum area).
    """
    from wsi_stnuc.model.checkpoint import load_checkpoint
    from wsi_stnuc.model.net import predict
    from wsi_stnuc.model.postprocess import heads_to_instances

    path = Path(path)
    model, meta = load_checkpoint(path, device)

    def forward(images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        heads = predict(model, images, batch_size=batch_size)
        return list(zip(heads["np"], heads["hv"], heads["tp"], strict=True))

    def postprocess(raw: tuple[np.ndarray, np.ndarray, np.ndarray]) -> InstanceResult:
        return heads_to_instances(*raw, **postprocess_kwargs)

    identity = {
        "name": path.name,
        "sha256": _sha256(path),
        "version": meta.get("version", ""),
        "arch": meta.get("arch", {}),
        "postprocess": postprocess_kwargs,
    }
    classes = meta["classes"]
    if not isinstance(classes, ClassTable):  # the metadata holds the table or its dict form
        classes = ClassTable.from_dict(classes)
    return Segmenter(forward, float(meta["mpp"]), classes, postprocess, identity)


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

    def to_dict(self) -> dict:
        return asdict(self)


def model_tag(identity: dict) -> int:
    """A 24-bit number naming a model, stored on every exported QuPath object."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return int(hashlib.sha256(text.encode()).hexdigest()[:6], 16)


def slide_outputs(out_dir: Path, name: str) -> dict[str, Path]:
    """Where :func:`infer_slide` writes the outputs of slide ``name``."""
    return {
        "parquet": out_dir / f"{name}.parquet",
        "geojson": out_dir / f"{name}.geojson",
        "geojson_zip": out_dir / f"{name}.geojson.zip",
        "summary": out_dir / f"{name}.summary.json",
        "parts": out_dir / f"{name}.parts",
    }


def _as_segmenter(model, device: str, batch_size: int) -> Segmenter:
    if isinstance(model, Segmenter):
        return model
    if isinstance(model, str | Path):
        return checkpoint_segmenter(model, device, batch_size=batch_size)
    if callable(model) and hasattr(model, "mpp") and hasattr(model, "classes"):
        # a plain callable images -> [(inst, info), ...] that states its mpp and classes
        name = getattr(model, "__name__", type(model).__name__)
        return Segmenter(model, float(model.mpp), model.classes, identity={"name": name})
    raise TypeError(
        "model must be a checkpoint path, a Segmenter, or a callable with .mpp and .classes; "
        f"got {type(model).__name__}"
    )


def _class_names(classes: ClassTable, class_ids: np.ndarray) -> np.ndarray:
    lookup = np.array([UNKNOWN, *classes.names, UNKNOWN], dtype=object)
    ids = np.asarray(class_ids, dtype=np.int64)
    return lookup[np.where((ids >= 1) & (ids <= classes.n_classes), ids, len(lookup) - 1)]


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
    gdf = stitch_tile(inst, info, tile_row, attrs)
    if len(gdf) == 0:
        return gdf
    labels = gdf["label"].to_numpy()
    feats = nucleus_features(
        gdf.geometry.to_numpy(), inst, labels, image,
        slide_mpp=slide_mpp, scale=(attrs["sx"], attrs["sy"]),
    )  # fmt: skip
    # one frame from a column dict (same column order as assigning them one by one): each
    # GeoDataFrame column assignment costs about as much as a tile's features
    cols: dict[str, Any] = {c: gdf[c] for c in gdf.columns if c not in _TILE_LOCAL}
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
) -> int:
    frames = [
        _tile_nuclei(raw, images[i], rows.iloc[i], attrs, seg, slide_mpp)
        for i, raw in enumerate(raws)
    ]
    frames = [f for f in frames if len(f)]
    gdf = pd.concat(frames, ignore_index=True) if frames else gpd.GeoDataFrame(geometry=[])
    write_geoparquet(gpd.GeoDataFrame(gdf), part, metadata={"tiles": rows["tile_id"].tolist()})
    return len(gdf)


def _run_config(seg: Segmenter, slide, grid: gpd.GeoDataFrame, batch_size: int) -> dict:
    return {
        "model": seg.identity,
        "model_mpp": seg.mpp,
        "slide_mpp": list(slide.mpp),
        "dimensions": list(slide.dimensions),
        "core_px": grid.attrs["core_px"],
        "halo_px": grid.attrs["halo_px"],
        "n_tiles": len(grid),
        "tile_ids_sha": hashlib.sha256(grid["tile_id"].to_numpy().tobytes()).hexdigest(),
        "batch_size": batch_size,
    }


def _prepare_parts(parts: Path, config: dict, resume: bool) -> set[int]:
    """Batches already done; starts over when not resuming or when the settings changed."""
    run_file = parts / RUN_FILE
    if resume and run_file.is_file():
        old = json.loads(run_file.read_text())
        if old == json.loads(json.dumps(config, default=str)):
            done = {int(p.stem.split("-")[1]) for p in parts.glob("batch-*.parquet")}
            log.info("%s: resuming, %d batches already done", parts, len(done))
            return done
        log.warning("%s: settings changed since the partial run; starting over", parts)
    if parts.exists():
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    with atomic_path(run_file) as tmp:
        tmp.write_text(json.dumps(config, default=str, indent=1))
    return set()


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
                    pool.submit(_finish_batch, part, raws, images, rows, attrs, seg, slide_mpp)
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
    cols.update({f"{NucleusCols.PROB_PREFIX}{k + 1}": np.float32 for k in range(classes.n_classes)})
    cols.update({c: np.float64 for c in FEATURE_COLUMNS})
    frame = pd.DataFrame({c: np.zeros(0, t) for c, t in cols.items()})
    frame[NucleusCols.CLASS_NAME] = np.zeros(0, dtype=object)
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries([], dtype="geometry"))


def _metadata(slide, seg: Segmenter, grid: gpd.GeoDataFrame, tissue_mm2: float) -> dict:
    return {
        "slide": {
            "path": str(slide.path),
            "dimensions": list(slide.dimensions),
            "mpp": list(slide.mpp),
            "vendor": slide.vendor,
            "backend": slide.backend,
        },
        "model": {**seg.identity, "mpp": seg.mpp},
        "classes": seg.classes.to_dict(),
        "tiling": {k: v for k, v in grid.attrs.items()},
        "tissue_area_mm2": tissue_mm2,
        "coordinates": "slide level-0 pixels, x right, y down, origin top-left pixel corner",
    }


def _tissue(slide, tissue: bool):
    """Tissue geometry (level-0) and its area in mm² (whole slide when ``tissue`` is off)."""
    mpp_x, mpp_y = slide.mpp
    if tissue:
        from wsi_stnuc.slide.tissue import detect_tissue

        geom = detect_tissue(slide)
        return geom, float(shapely.area(geom)) * mpp_x * mpp_y / 1e6
    width, height = slide.dimensions
    return None, width * height * mpp_x * mpp_y / 1e6


def infer_slide(
    model: str | Path | Segmenter,
    slide_path: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    mpp_override: float | None = None,
    core: int = 512,
    halo: int = 64,
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
    with a ``halo`` (model px, wider than the largest nucleus) are read at the model's mpp;
    ``mpp_override`` replaces the slide's own µm/px. ``tissue`` restricts the grid to detected
    tissue. With ``resume`` a finished slide is skipped and a partial one continues where it
    stopped. ``qupath_zip`` (default: above :data:`ZIP_ABOVE_NUCLEI` nuclei) zips the GeoJSON;
    ``qupath_cells`` exports cell objects (nuclei grown by 5 µm within their Voronoi regions).
    Outputs are named after ``name`` (default: the slide file stem). ``reader``: tiles are
    decoded and resampled in ``workers`` ``"threads"`` (default) or ``"processes"`` (outside
    this interpreter's lock, for many-core GPU machines where the reads compete with
    post-processing; a daemonic process, e.g. a Dask worker, cannot start them and falls
    back to threads). The output is the same either way.
    """
    from wsi_stnuc.slide.registry import open_slide

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    slide_path = Path(slide_path)
    name = name or slide_path.name.split(".")[0]
    paths = slide_outputs(out_dir, name)
    workers = workers or min(4, os.cpu_count() or 1)
    reader = _reader_scheduler(reader)
    if resume and paths["summary"].is_file():
        result = SlideResult(**json.loads(paths["summary"].read_text()))
        if Path(result.parquet).is_file():
            log.info("%s: already finished, skipping", name)
            return result
    seg = _as_segmenter(model, device, batch_size)
    with open_slide(slide_path, mpp=mpp_override) as slide:
        slide.mpp  # noqa: B018 - raises InputError early for a slide without mpp
        tissue_geom, tissue_mm2 = _tissue(slide, tissue)
        from wsi_stnuc.slide.tiling import tile_grid

        grid = tile_grid(slide, seg.mpp, core=core, halo=halo, tissue=tissue_geom)
        config = _run_config(seg, slide, grid, batch_size)
        done = _prepare_parts(paths["parts"], config, resume)
        _run_batches(
            slide, grid, seg, paths["parts"], done,
            batch_size=batch_size, workers=workers, progress=progress, label=name,
            reader=reader,
        )  # fmt: skip
        meta = _metadata(slide, seg, grid, tissue_mm2)
        mpp_x = slide.mpp[0]
    n_batches = len(_batches(grid, batch_size))
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
    geojson = None
    tag = model_tag(seg.identity)
    if qupath:
        zipped = n > ZIP_ABOVE_NUCLEI if qupath_zip is None else qupath_zip
        geojson = paths["geojson_zip"] if zipped else paths["geojson"]
        stale = paths["geojson"] if zipped else paths["geojson_zip"]
        stale.unlink(missing_ok=True)
        frames: Iterator[gpd.GeoDataFrame] = _iter_parquet(paths["parquet"])
        if qupath_cells:
            frames = _with_cells(frames, paths["parquet"], CELL_EXPANSION_UM / mpp_x)
        frames = (f.assign(**{QuPath.MODEL_TAG: tag}) for f in frames)
        write_qupath_geojson(
            frames,
            geojson,
            classes=seg.classes,
            uuid_key=f"{name}|{seg.identity.get('sha256', seg.identity.get('name', ''))}",
            nucleus_geometry_column="nucleus_geometry" if qupath_cells else None,
        )
    result = SlideResult(
        name=name,
        slide_path=str(slide_path),
        parquet=str(paths["parquet"]),
        geojson=None if geojson is None else str(geojson),
        n_nuclei=n,
        class_counts=dict(sorted(counts.items())),
        tissue_area_mm2=tissue_mm2,
        seconds=time.perf_counter() - t0,
        n_tiles=len(grid),
        model_tag=tag,
        classes=seg.classes.to_dict(),
    )
    with atomic_path(paths["summary"]) as tmp:
        tmp.write_text(json.dumps(result.to_dict(), indent=1))
    shutil.rmtree(paths["parts"], ignore_errors=True)
    write_slide_overview(result, mpp_override)
    log.info("%s: %d nuclei in %.1f s", name, n, result.seconds)
    return result

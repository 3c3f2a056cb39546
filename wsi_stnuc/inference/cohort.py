"""Run whole-slide inference over a cohort: serially, or one slide per Dask task.

Inputs may be slide files, plain images (PNG/JPEG), folders (searched recursively by
extension), glob patterns, or CSV manifests with a ``path`` column (relative to the CSV) and
optional ``mpp`` (µm/px for a file that states none) and ``name`` columns. A slide's outputs
are named ``STEM-HASH`` (``inference.identity.output_name``: from its own path, the same
whichever files a run sees) unless the manifest names it; names never point outside the
output folder. The model, device and options are checked once, before any slide; one failing
slide (corrupt file, no mpp) is recorded in the manifest with its error and the others go on,
and a slide another run is writing (its lock held) is skipped and reported.

Outputs in ``out_dir``: per slide ``NAME.parquet`` / ``NAME.geojson[.zip]`` /
``NAME.summary.json`` (see :func:`wsi_stnuc.inference.infer.infer_slide`), ``manifest.csv``
(one row per slide, path -> name, status, error, outputs; merged with earlier runs' rows
after every slide, see ``inference.manifest``) and ``cohort_summary.csv`` (nuclei per class,
density per mm² of tissue, seconds per slide). The manifest rows are what a cohort report
reads (``inference.manifest.read_manifest``).

Distributed runs use Dask distributed, one slide per task: ``local_cluster=N`` starts a
``LocalCluster`` of N single-threaded workers (one per GPU where GPUs exist, each worker
pinned to its own device), ``scheduler="tcp://host:8786"`` joins a running cluster. On a
SLURM machine, start the cluster with dask-jobqueue (``pip install dask-jobqueue``)::

    from dask_jobqueue import SLURMCluster
    cluster = SLURMCluster(cores=8, memory="64GB", processes=1, walltime="12:00:00",
                           job_extra_directives=["--gres=gpu:1"],
                           worker_extra_args=["--resources", "GPU=1"])
    cluster.scale(jobs=4)          # four GPU nodes, one slide at a time on each
    # then: wsi-stnuc infer --model m.pt SLIDES --out OUT --scheduler cluster.scheduler_address

Every worker must see the slides, the model and ``out_dir`` at the same paths (shared disk).
"""

from __future__ import annotations

import glob
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from wsi_stnuc.errors import InputError
from wsi_stnuc.formats import Cohort
from wsi_stnuc.inference.identity import SlideIdentity, output_name, safe_name
from wsi_stnuc.inference.lock import LockHeld
from wsi_stnuc.inference.manifest import merge_rows
from wsi_stnuc.inference.report import write_cohort_report
from wsi_stnuc.progress import bar_disable
from wsi_stnuc.slide.registry import IMAGE_SUFFIXES, TIFF_SUFFIXES, VENDOR_SUFFIXES, ZARR_SUFFIXES

log = logging.getLogger(__name__)

SLIDE_SUFFIXES = TIFF_SUFFIXES + VENDOR_SUFFIXES + IMAGE_SUFFIXES
MANIFEST = Cohort.MANIFEST
SUMMARY = Cohort.SUMMARY


@dataclass(frozen=True)
class SlideJob:
    """One slide to process: its path, its output name and the µm/px to use where the file
    states none."""

    path: Path
    name: str
    mpp: float | None = None


@dataclass
class CohortResult:
    """This run's manifest rows (one dict per slide, ``status`` ok / failed / locked), where
    the CSVs went, and the manifest writes that failed (one line each)."""

    rows: list[dict]
    manifest: Path
    summary: Path
    write_errors: list[str] = field(default_factory=list)
    n_failed: int = field(init=False)
    n_locked: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_failed = sum(r["status"] == "failed" for r in self.rows)
        self.n_locked = sum(r["status"] == "locked" for r in self.rows)


def _slide_stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(SLIDE_SUFFIXES + ZARR_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_slide(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(ZARR_SUFFIXES):
        return True
    return path.is_file() and name.endswith(SLIDE_SUFFIXES)


def _scan_folder(folder: Path) -> list[Path]:
    found = []
    for path in sorted(folder.rglob("*")):
        # do not look inside zarr stores (their chunks are not slides)
        if any(p.name.lower().endswith(ZARR_SUFFIXES) for p in path.parents):
            continue
        if _is_slide(path):
            found.append(path)
    return found


def _read_manifest(csv_path: Path) -> list[tuple[Path, float | None, str | None]]:
    try:
        table = pd.read_csv(csv_path, dtype={Cohort.PATH: str, Cohort.NAME: str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(csv_path, f"cannot read manifest CSV ({exc})") from exc
    if Cohort.PATH not in table.columns:
        raise InputError(csv_path, "manifest needs a 'path' column (optional: mpp, name)")
    rows = []
    for i, rec in enumerate(table.to_dict("records")):
        if not isinstance(rec[Cohort.PATH], str) or not rec[Cohort.PATH].strip():
            raise InputError(csv_path, f"row {i + 2}: empty path")
        path = Path(rec[Cohort.PATH])
        path = path if path.is_absolute() else csv_path.parent / path
        mpp = rec.get(Cohort.MPP)
        try:
            mpp = None if mpp is None or pd.isna(mpp) else float(mpp)
        except (TypeError, ValueError) as exc:
            raise InputError(csv_path, f"row {i + 2}: mpp {mpp!r} is not a number") from exc
        name = rec.get(Cohort.NAME)
        name = None if name is None or pd.isna(name) else safe_name(str(name))
        if name == "":
            raise InputError(csv_path, f"row {i + 2}: name {rec[Cohort.NAME]!r} has no usable "
                                       "letters")  # fmt: skip
        rows.append((path, mpp, name))
    return rows


def _unique_jobs(entries: list[tuple[Path, float | None, str | None]]) -> list[SlideJob]:
    """One job per slide file (first mention wins); two files under one name are refused."""
    jobs: list[SlideJob] = []
    by_path: dict[str, SlideJob] = {}
    by_name: dict[str, str] = {}
    for path, row_mpp, name in entries:
        key = str(path.resolve())
        if key in by_path:
            if name is not None and name != by_path[key].name:
                log.warning("%s: listed twice; keeping the name %r", path, by_path[key].name)
            continue
        name = name or output_name(path, _slide_stem(path))
        if by_name.get(name, key) != key:
            raise InputError(path, f"output name {name!r} is also given to {by_name[name]}")
        by_name[name] = key
        by_path[key] = job = SlideJob(path, name, row_mpp)
        jobs.append(job)
    return jobs


def collect_slides(inputs: Sequence[str | Path], mpp: float | None = None) -> list[SlideJob]:
    """Expand slide files, folders, globs and CSV manifests into one job per slide file.

    ``mpp`` is the µm/px for slides that state none and whose manifest row gives none. Names
    are the manifest's, else ``STEM-HASH`` of the file's own path. A missing input or two
    files given one name raise :class:`InputError`.
    """
    entries: list[tuple[Path, float | None, str | None]] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.suffix.lower() == ".csv" and path.is_file():
            entries += _read_manifest(path)
        elif path.is_dir() and not _is_slide(path):
            entries += [(p, None, None) for p in _scan_folder(path)]
        elif glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            if not matches:
                raise InputError(path, "glob matches no file")
            entries += [(p, None, None) for p in matches]
        elif path.exists():
            entries.append((path, None, None))
        else:
            raise InputError(path, "no such slide, folder, glob match or manifest")
    entries = [(p, row_mpp if row_mpp is not None else mpp, n) for p, row_mpp, n in entries]
    return _unique_jobs(entries)


def _worker_device(device: str) -> str:
    """Inside a Dask worker with several GPUs, pin worker i to GPU i (round robin)."""
    if device != "auto":
        return device
    try:
        import torch
        from distributed import get_worker

        n = torch.cuda.device_count()
        worker = get_worker()
    except (ImportError, ValueError):
        return device
    if n <= 1:
        return device
    index = worker.name if isinstance(worker.name, int) else sum(map(ord, str(worker.name)))
    return f"cuda:{index % n}"


def _identity_fields(path: Path) -> dict:
    try:
        return SlideIdentity.of(path).to_dict()
    except OSError:  # a missing or unreadable file: its row still names it
        return {"path": str(path)}


def run_slide(job: SlideJob, model, out_dir: str | Path, options: dict) -> dict:
    """Process one slide, never raising: the manifest row, ``status`` ok, failed or locked
    (another run holds the slide; such rows are reported, not written to the manifest)."""
    from wsi_stnuc.inference.infer import infer_slide

    row = {"name": job.name, **_identity_fields(job.path), "status": "ok", "error": ""}
    try:
        opts = {**options, "device": _worker_device(options.get("device", "auto"))}
        result = infer_slide(model, job.path, out_dir, name=job.name, mpp=job.mpp, **opts)
    except LockHeld as exc:
        log.warning("slide skipped: %s", exc)
        row.update(status="locked", error=str(exc))
        return row
    except Exception as exc:  # one bad slide must not stop the cohort; the row records it
        message = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
        log.error("slide failed: %s", message)
        row.update(status="failed", error=message)
        return row
    settings = result.settings
    row.update(
        mpp=settings.get("slide_mpp", [""])[0],
        mpp_source=settings.get("mpp_source", ""),
        model=settings.get("model", {}).get("name", ""),
        settings_key=result.settings_key,
        parquet=result.parquet,
        geojson=result.geojson or "",
        summary=str(Path(out_dir) / f"{job.name}.summary.json"),
        n_nuclei=result.n_nuclei,
        tissue_area_mm2=result.tissue_area_mm2,
        seconds=round(result.seconds, 3),
        class_counts=result.class_counts,
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return row


def _client(scheduler: str | None, local_cluster: int | None, processes: bool):
    from distributed import Client, LocalCluster

    if scheduler is not None:
        return Client(scheduler), None
    try:
        import torch

        n_gpus = torch.cuda.device_count()
    except ImportError:
        n_gpus = 0
    n = local_cluster or max(n_gpus, 1)
    resources = {"GPU": 1} if n_gpus else None
    cluster = LocalCluster(
        n_workers=n, threads_per_worker=1, processes=processes, resources=resources,
        dashboard_address=None,
    )  # fmt: skip
    return Client(cluster), cluster


def _out_folder(out_dir: Path) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "--out is a file; it must be a folder (new or existing)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(out_dir, f"cannot create the output folder ({exc.strerror})") from exc
    return out_dir


def check_run(model, options: dict, distributed: bool):
    """Load and check the model, device and tiling options once, before any slide.

    Returns what to hand to each slide: the :class:`Segmenter` in a serial run, the
    checkpoint path in a distributed one (each worker loads its own copy on its device).
    """
    from wsi_stnuc.inference.infer import _reader_scheduler
    from wsi_stnuc.inference.segmenter import as_segmenter, size_guards
    from wsi_stnuc.model.device import check_device

    device = check_device(options.get("device", "auto"))
    _reader_scheduler(options.get("reader", "threads"))
    seg = as_segmenter(model, device, options.get("batch_size", 8))
    guards = size_guards(seg, options.get("halo"), options.get("min_area_um2"),
                         options.get("max_area_um2"))  # fmt: skip
    core = int(options.get("core", 512))
    if core < guards.halo_px:
        read = (core + 2 * guards.halo_px) ** 2 / core**2
        log.warning("--core %d is smaller than the halo (%d px): every tile reads %.0fx the "
                    "pixels it keeps; use --core %d or more", core, guards.halo_px, read,
                    4 * guards.halo_px)  # fmt: skip
    return model if distributed and isinstance(model, str | Path) else seg


def run_cohort(
    inputs: Sequence[str | Path],
    model,
    out_dir: str | Path,
    *,
    resume: bool = False,
    scheduler: str | None = None,
    local_cluster: int | None = None,
    processes: bool = True,
    mpp: float | None = None,
    progress: bool = True,
    **infer_options,
) -> CohortResult:
    """Run :func:`wsi_stnuc.inference.infer.infer_slide` on every slide of ``inputs``.

    ``model`` is a checkpoint path or a ``Segmenter``, checked once with the device and
    options before any slide. Serial unless ``scheduler`` (address of a Dask scheduler) or
    ``local_cluster`` (number of local workers; ``processes=False`` keeps them in this
    process) is given. ``mpp`` is the µm/px for slides that state none (``force_mpp`` in
    ``infer_options`` overrides every slide's). ``infer_options`` go to ``infer_slide``
    (``core``, ``halo``, ``min_area_um2``, ``max_area_um2``, ``batch_size``, ``device``,
    ``tissue``, ``qupath``, ``qupath_zip``, ``qupath_cells``, ``workers``, ``reader``,
    ``force_mpp``). Returns this run's rows; failed slides have ``status == "failed"`` and the
    error text, slides another run holds ``"locked"``.
    """
    out_dir = _out_folder(Path(out_dir))
    jobs = collect_slides(inputs, mpp)
    if not jobs:
        raise InputError(None, f"no slides found in {list(map(str, inputs))}")
    for job in jobs:
        target = (out_dir / job.name).resolve()
        if not target.is_relative_to(out_dir.resolve()):  # safe_name makes this unreachable
            raise InputError(job.path, f"output name {job.name!r} escapes {out_dir}")
    distributed = scheduler is not None or local_cluster is not None
    model = check_run(model, infer_options, distributed)
    options = {"resume": resume, "progress": progress and not distributed, **infer_options}
    rows: list[dict] = []
    errors: list[str] = []
    unwritten: list[dict] = []  # rows a failed manifest write left out; the next write tries

    def record(row: dict) -> None:
        rows.append(row)
        if row["status"] == "locked":
            return  # the run that holds the slide writes its row
        unwritten.append(row)
        try:
            merge_rows(out_dir, unwritten)
        except (OSError, InputError) as exc:  # a full disk, a manifest another run holds
            errors.append(f"{out_dir / MANIFEST}: not updated for {row['path']} ({exc})")
            log.error(errors[-1])
        else:
            unwritten.clear()

    bar = tqdm(total=len(jobs), desc="slides", unit="slide", disable=bar_disable(progress))
    try:
        if distributed:
            _run_distributed(jobs, model, out_dir, options, scheduler, local_cluster,
                             processes, record, bar)  # fmt: skip
        else:
            for job in jobs:
                record(run_slide(job, model, out_dir, options))
                bar.update(1)
    finally:
        bar.close()
    try:
        write_cohort_report(rows, out_dir)
    except OSError as exc:  # the results are written; a report is not worth failing on
        errors.append(f"{out_dir}: cohort report not written ({exc})")
        log.error(errors[-1])
    result = CohortResult(rows, out_dir / MANIFEST, out_dir / SUMMARY, errors)
    log.info("cohort: %d slides, %d failed, %d held by another run", len(rows),
             result.n_failed, result.n_locked)  # fmt: skip
    return result


def _run_distributed(jobs, model, out_dir, options, scheduler, local_cluster, processes,
                     record, bar) -> None:  # fmt: skip
    from distributed import as_completed

    client, cluster = _client(scheduler, local_cluster, processes)
    try:
        gpu = bool(client.run_on_scheduler(_scheduler_has_gpu_workers))
        futures = [
            client.submit(
                run_slide,
                job,
                model,
                str(out_dir),
                options,
                key=f"slide-{job.name}-{uuid.uuid4().hex[:8]}",
                pure=False,
                resources={"GPU": 1} if gpu else None,
            )  # fmt: skip
            for job in jobs
        ]
        for future in as_completed(futures):
            record(future.result())
            bar.update(1)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _scheduler_has_gpu_workers(dask_scheduler=None) -> bool:
    return any("GPU" in (ws.resources or {}) for ws in dask_scheduler.workers.values())

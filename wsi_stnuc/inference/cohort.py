"""Run whole-slide inference over a cohort: serially, or one slide per Dask task.

Inputs may be slide files, folders (searched recursively by slide extension), glob patterns,
or CSV manifests with a ``path`` column (relative to the CSV) and optional ``mpp`` and
``name`` columns. Each slide's outputs are named after a sanitised name that can never point
outside the output folder. One failing slide (corrupt file, no mpp) is recorded in the
manifest with its error and the others go on.

Outputs in ``out_dir``: per slide ``NAME.parquet`` / ``NAME.geojson[.zip]`` /
``NAME.summary.json`` (see :func:`wsi_stnuc.inference.infer.infer_slide`), ``manifest.csv`` (one row
per slide: status, error, outputs; rewritten atomically after every slide) and
``cohort_summary.csv`` (nuclei per class, density per mm² of tissue, seconds per slide).

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

import csv
import glob
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from wsi_stnuc.errors import InputError
from wsi_stnuc.inference.report import write_cohort_report
from wsi_stnuc.io_utils import atomic_path
from wsi_stnuc.progress import bar_disable
from wsi_stnuc.slide.registry import TIFF_SUFFIXES, VENDOR_SUFFIXES, ZARR_SUFFIXES

log = logging.getLogger(__name__)

SLIDE_SUFFIXES = TIFF_SUFFIXES + VENDOR_SUFFIXES
MANIFEST = "manifest.csv"
SUMMARY = "cohort_summary.csv"
UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SlideJob:
    """One slide to process: its path, an optional mpp override and its output name."""

    path: Path
    name: str
    mpp: float | None = None


@dataclass
class CohortResult:
    """Rows of the manifest (one dict per slide) and where the CSVs went."""

    rows: list[dict]
    manifest: Path
    summary: Path
    n_failed: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_failed = sum(r["status"] != "ok" for r in self.rows)


def safe_name(name: str) -> str:
    """A file-name stem that stays inside the output folder: letters, digits, ``._-`` only,
    no leading dots (so ``../x`` -> ``x``, ``/abs/p`` -> ``abs_p``)."""
    cleaned = UNSAFE_CHARS.sub("_", str(name)).strip("._-")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    return cleaned


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
        table = pd.read_csv(csv_path, dtype={"path": str, "name": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(csv_path, f"cannot read manifest CSV ({exc})") from exc
    if "path" not in table.columns:
        raise InputError(csv_path, "manifest needs a 'path' column (optional: mpp, name)")
    rows = []
    for i, rec in enumerate(table.to_dict("records")):
        if not isinstance(rec["path"], str) or not rec["path"].strip():
            raise InputError(csv_path, f"row {i + 2}: empty path")
        path = Path(rec["path"])
        path = path if path.is_absolute() else csv_path.parent / path
        mpp = rec.get("mpp")
        try:
            mpp = None if mpp is None or pd.isna(mpp) else float(mpp)
        except (TypeError, ValueError) as exc:
            raise InputError(csv_path, f"row {i + 2}: mpp {mpp!r} is not a number") from exc
        name = rec.get("name")
        rows.append((path, mpp, None if name is None or pd.isna(name) else str(name)))
    return rows


def collect_slides(inputs: Sequence[str | Path], mpp: float | None = None) -> list[SlideJob]:
    """Expand slide files, folders, globs and CSV manifests into unique, safely named jobs.

    ``mpp`` applies to slides whose manifest row gives none. Names that collide get ``-2``,
    ``-3`` ... suffixes in input order. A missing input raises :class:`InputError`.
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
    jobs, used = [], set()
    for path, row_mpp, name in entries:
        base = safe_name(name if name is not None else _slide_stem(path)) or "slide"
        unique, k = base, 1
        while unique in used:
            k += 1
            unique = f"{base}-{k}"
        used.add(unique)
        jobs.append(SlideJob(path, unique, row_mpp if row_mpp is not None else mpp))
    return jobs


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


def run_slide(job: SlideJob, model, out_dir: str | Path, options: dict) -> dict:
    """Process one slide, never raising: the manifest row with ``status`` ok or failed."""
    from wsi_stnuc.inference.infer import infer_slide

    row = {"name": job.name, "path": str(job.path), "mpp": job.mpp, "status": "ok", "error": ""}
    try:
        opts = {**options, "device": _worker_device(options.get("device", "auto"))}
        result = infer_slide(model, job.path, out_dir, name=job.name, mpp_override=job.mpp, **opts)
    except Exception as exc:  # one bad slide must not stop the cohort; the row records it
        log.error("slide failed: %s", exc)
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        return row
    row.update(
        parquet=result.parquet,
        geojson=result.geojson or "",
        n_nuclei=result.n_nuclei,
        tissue_area_mm2=result.tissue_area_mm2,
        seconds=round(result.seconds, 3),
        class_counts=result.class_counts,
    )
    return row


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, quoting=csv.QUOTE_MINIMAL)


def _manifest_frame(rows: list[dict]) -> pd.DataFrame:
    cols = ["name", "path", "mpp", "status", "error", "parquet", "geojson", "n_nuclei", "seconds"]
    frame = pd.DataFrame([{c: r.get(c, "") for c in cols} for r in rows], columns=cols)
    return frame.sort_values("name", kind="stable")


def _summary_frame(rows: list[dict]) -> pd.DataFrame:
    ok = [r for r in rows if r["status"] == "ok"]
    classes = sorted({c for r in ok for c in r["class_counts"]})
    records = []
    for r in ok:
        area = r["tissue_area_mm2"]
        rec = {"name": r["name"], "n_nuclei": r["n_nuclei"]}
        rec.update({f"n_{c}": r["class_counts"].get(c, 0) for c in classes})
        rec["tissue_area_mm2"] = area
        rec["nuclei_per_mm2"] = r["n_nuclei"] / area if area > 0 else float("nan")
        rec.update(
            {f"{c}_per_mm2": r["class_counts"].get(c, 0) / area if area > 0 else float("nan")
             for c in classes}
        )  # fmt: skip
        rec["seconds"] = r["seconds"]
        records.append(rec)
    columns = ["name", "n_nuclei", *[f"n_{c}" for c in classes], "tissue_area_mm2",
               "nuclei_per_mm2", *[f"{c}_per_mm2" for c in classes], "seconds"]  # fmt: skip
    return pd.DataFrame(records, columns=columns).sort_values("name", kind="stable")


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

    ``model`` is a checkpoint path (each worker loads it) or a ``Segmenter``. Serial unless
    ``scheduler`` (address of a Dask scheduler) or ``local_cluster`` (number of local workers;
    ``processes=False`` keeps them in this process) is given. ``infer_options`` go to
    ``infer_slide`` (``core``, ``halo``, ``batch_size``, ``device``, ``tissue``, ``qupath``,
    ``qupath_zip``, ``qupath_cells``, ``workers``, ``reader``). Returns the manifest rows; failed slides
    have ``status == "failed"`` and the error text.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = collect_slides(inputs, mpp)
    if not jobs:
        raise InputError(None, f"no slides found in {list(map(str, inputs))}")
    for job in jobs:
        target = (out_dir / job.name).resolve()
        if not target.is_relative_to(out_dir.resolve()):  # safe_name makes this unreachable
            raise InputError(job.path, f"output name {job.name!r} escapes {out_dir}")
    manifest, summary = out_dir / MANIFEST, out_dir / SUMMARY
    distributed = scheduler is not None or local_cluster is not None
    options = {"resume": resume, "progress": progress and not distributed, **infer_options}
    rows: list[dict] = []

    def record(row: dict) -> None:
        rows.append(row)
        _write_csv(manifest, _manifest_frame(rows))

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
    _write_csv(summary, _summary_frame(rows))
    write_cohort_report(rows, out_dir)
    result = CohortResult(rows, manifest, summary)
    log.info("cohort: %d slides, %d failed", len(rows), result.n_failed)
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

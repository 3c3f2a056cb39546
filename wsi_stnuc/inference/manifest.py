"""The cohort's record: ``manifest.csv`` (one row per slide) and ``cohort_summary.csv``.

Both describe every slide whose outputs are in the folder, not only the latest run's: a run
merges its rows into the manifest, replacing the rows of the same slide (its resolved path) or
of the same output name, under a lock so that concurrent runs do not drop each other's rows.
The summary is rebuilt from the merged manifest and the finished slides' ``NAME.summary.json``
files, so it always agrees with what is on disk. The manifest rows are the input of anything
that reports on a cohort (``read_manifest``).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from wsi_stnuc.formats import Cohort
from wsi_stnuc.inference.lock import locked
from wsi_stnuc.io_utils import atomic_path

log = logging.getLogger(__name__)

_LOCK = ".manifest.lock"
# a merge takes milliseconds; a run waits this long for another one's before giving up
MERGE_WAIT_S = 120.0


def read_manifest(out_dir: str | Path) -> pd.DataFrame:
    """The manifest of ``out_dir`` (every column of ``Cohort.MANIFEST_COLUMNS``; empty if none).

    An unreadable manifest is logged and treated as empty: the per-slide summaries on disk
    remain the truth, and the next merge rewrites it.
    """
    path = Path(out_dir) / Cohort.MANIFEST
    columns = list(Cohort.MANIFEST_COLUMNS)
    if not path.is_file():
        return pd.DataFrame(columns=columns)
    try:
        # text as written: a failed slide's empty counts stay empty, not NaN
        frame = pd.read_csv(path, dtype={"name": str, "path": str, "error": str},
                            keep_default_na=False)  # fmt: skip
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        log.warning("%s: unreadable manifest, rebuilding it from this run (%s)", path, exc)
        return pd.DataFrame(columns=columns)
    for col in columns:
        if col not in frame.columns:
            frame[col] = ""
    return frame[columns + [c for c in frame.columns if c not in columns]]


def _row_frame(rows: Sequence[dict]) -> pd.DataFrame:
    columns = list(Cohort.MANIFEST_COLUMNS)
    return pd.DataFrame([{c: r.get(c, "") for c in columns} for r in rows], columns=columns)


def merge_rows(out_dir: str | Path, rows: Sequence[dict]) -> pd.DataFrame:
    """Merge ``rows`` into ``out_dir``'s manifest and rewrite the cohort summary; returns the
    merged manifest. OSError (e.g. a full disk) propagates; the files keep their old content."""
    out_dir = Path(out_dir)
    with locked(out_dir / _LOCK, wait=MERGE_WAIT_S):
        old = read_manifest(out_dir)
        new = _row_frame(rows)
        stale = old["path"].isin(new["path"]) | old["name"].isin(new["name"])
        merged = new if old.empty else pd.concat([old[~stale], new], ignore_index=True)
        merged = merged.sort_values("name", kind="stable").reset_index(drop=True)
        _write_csv(out_dir / Cohort.MANIFEST, merged)
        _write_csv(out_dir / Cohort.SUMMARY, summary_frame(merged, out_dir))
    return merged


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, quoting=csv.QUOTE_MINIMAL)


def _slide_summary(row: pd.Series, out_dir: Path) -> dict | None:
    path = Path(str(row["summary"])) if row["summary"] else out_dir / f"{row['name']}.summary.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s: finished slide's summary unreadable, left out of %s (%s)",
                    path, Cohort.SUMMARY, exc)  # fmt: skip
        return None


def summary_frame(manifest: pd.DataFrame, out_dir: str | Path) -> pd.DataFrame:
    """One row per finished slide: nuclei per class, per mm² of tissue, and seconds."""
    out_dir = Path(out_dir)
    done = manifest[manifest["status"] == "ok"]
    found = [(r, _slide_summary(r, out_dir)) for _, r in done.iterrows()]  # per slide, not nucleus
    found = [(r, s) for r, s in found if s is not None]
    classes = sorted({c for _, s in found for c in s["class_counts"]})
    records = []
    for row, s in found:
        area, counts = float(s["tissue_area_mm2"]), s["class_counts"]

        def density(n: float, area: float = area) -> float:
            return n / area if area > 0 else float("nan")

        rec = {"name": row["name"], "path": row["path"], "n_nuclei": s["n_nuclei"]}
        rec.update({f"n_{c}": counts.get(c, 0) for c in classes})
        rec["tissue_area_mm2"] = area
        rec["nuclei_per_mm2"] = density(s["n_nuclei"])
        rec.update({f"{c}_per_mm2": density(counts.get(c, 0)) for c in classes})
        rec["seconds"] = s["seconds"]
        records.append(rec)
    columns = ["name", "path", "n_nuclei", *[f"n_{c}" for c in classes], "tissue_area_mm2",
               "nuclei_per_mm2", *[f"{c}_per_mm2" for c in classes], "seconds"]  # fmt: skip
    return pd.DataFrame(records, columns=columns)

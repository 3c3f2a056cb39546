"""The label-review round trip: a LabelSet out to QuPath, a pathologist's edits back in.

``wsi-stnuc labels --qupath`` writes the LabelSet as QuPath detections whose ids are the rows'
object ids (:func:`labelset_object_ids`). In QuPath a pathologist reclassifies, deletes and
draws missed nuclei, then exports the objects (File > Export objects as GeoJSON).
:func:`merge_review` matches that file to the LabelSet by object id:

- a row whose object is gone was deleted: it is removed;
- an object with another class was reclassified: the new class at full weight (``confidence``
  and ``weight`` 1, ``prob_<class>`` one-hot) with ``source = reviewed``;
- an object with an id the LabelSet lacks was drawn: a new row (``source = manual``, the class
  as drawn or ``unknown``, no ST type);
- everything else is kept as it was.

Outlines of existing objects are not merged (QuPath does not let one reshape a detection; a
pathologist redraws the nucleus and deletes the old one). The reviewed LabelSet stores every
row's object id, so it can be exported and reviewed again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from wsi_stnuc.classes import UNKNOWN, ClassTable
from wsi_stnuc.errors import InputError
from wsi_stnuc.export.geometry import clean_polygons
from wsi_stnuc.export.ids import deterministic_uuids
from wsi_stnuc.export.qupath import read_qupath_geojson, write_qupath_geojson
from wsi_stnuc.formats import LabelCols as L
from wsi_stnuc.formats import NucleusCols, QuPath

#: A drawn object larger than this many times the LabelSet's 99th-percentile nucleus is a
#: region (a pathologist's outline of an area), not a missed nucleus.
MAX_DRAWN_AREA_RATIO = 20.0


def labelset_object_ids(labels: pd.DataFrame) -> np.ndarray:
    """The QuPath object id (UUID string) of each row: the ``object_id`` column where the
    LabelSet has one, else derived from its cell ids and row order (the same every time)."""
    if L.OBJECT_ID in labels.columns and labels[L.OBJECT_ID].notna().all():
        return labels[L.OBJECT_ID].astype(str).str.lower().to_numpy()
    cells = "\x1f".join(labels[L.CELL_ID].astype(str))
    key = "labelset|" + hashlib.sha256(cells.encode("utf-8")).hexdigest()[:16]
    ids = deterministic_uuids(key, np.arange(len(labels))).astype(object)
    if L.OBJECT_ID in labels.columns:
        given = labels[L.OBJECT_ID].notna().to_numpy()
        ids[given] = labels[L.OBJECT_ID][given].astype(str).str.lower().to_numpy()
    return ids


def write_labelset_qupath(labels: gpd.GeoDataFrame, path: str | Path, classes: ClassTable) -> Path:
    """The LabelSet as QuPath detections: class = ``image_class``, measurements
    ``confidence``, ``weight`` and the class probabilities, ids from :func:`labelset_object_ids`."""
    probs = [c for c in L.class_probs(classes.names) if c in labels.columns]
    table = labels.assign(**{L.OBJECT_ID: labelset_object_ids(labels)})
    return write_qupath_geojson(
        table, path, class_column=L.IMAGE_CLASS, classes=classes,
        measurement_columns=[L.CONFIDENCE, L.WEIGHT, *probs], object_type=QuPath.DETECTION,
        id_column=L.OBJECT_ID,
    )  # fmt: skip


@dataclass
class ReviewReport:
    """What the review changed."""

    kept: int = 0
    deleted: int = 0
    reclassified: int = 0
    drawn: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    changes: dict[str, int] = field(default_factory=dict)  # "old -> new": count

    def __str__(self) -> str:
        lines = [f"kept {self.kept}, deleted {self.deleted}, reclassified {self.reclassified}, "
                 f"drawn {self.drawn}"]  # fmt: skip
        lines += [f"  {change}: {n}" for change, n in sorted(self.changes.items())]
        lines += [f"  skipped ({why}): {n}" for why, n in self.skipped.items() if n]
        return "\n".join(lines)


def read_review(path: str | Path, classes: ClassTable) -> gpd.GeoDataFrame:
    """The objects of a QuPath export (annotations or detections; a classification as a name
    or ``{name, color}``): ``id`` (lower case), ``class_name`` (``unknown`` where none)."""
    path = Path(path)
    edits = read_qupath_geojson(path)
    edits["id"] = edits["id"].astype("string").str.lower()
    if edits["id"].isna().any():
        raise InputError(path, f"{int(edits['id'].isna().sum())} objects have no id")
    if edits["id"].duplicated().any():
        raise InputError(path, "object ids repeat: export each object once")
    names = edits[NucleusCols.CLASS_NAME].fillna(UNKNOWN).astype(str)
    bad = sorted(set(names) - {*classes.names, UNKNOWN})
    if bad:
        raise InputError(path, f"classes {bad} are not in the LabelSet's table {list(classes.names)}")
    edits[NucleusCols.CLASS_NAME] = names.to_numpy()
    return edits


def _one_hot(frame: pd.DataFrame, classes: ClassTable, rows: np.ndarray, names) -> None:
    """Set the ``prob_<class>`` columns of ``rows`` to certainty in ``names``."""
    for cls, col in zip(classes.names, L.class_probs(classes.names), strict=True):
        if col in frame.columns:
            frame.loc[rows, col] = (np.asarray(names) == cls).astype(np.float32)


def _drawn_rows(
    edits: gpd.GeoDataFrame, labels: gpd.GeoDataFrame, classes: ClassTable, report: ReviewReport
) -> gpd.GeoDataFrame:
    """New LabelSet rows for the drawn objects that are nuclei (valid polygons, nucleus-sized)."""
    geoms, keep, geom_report = clean_polygons(edits.geometry.to_numpy(), decimals=None)
    report.skipped["not a polygon"] = int((~keep).sum())
    if len(labels):
        limit = MAX_DRAWN_AREA_RATIO * np.nanpercentile(labels.geometry.area, 99)
        big = keep & (gpd.GeoSeries(geoms).area.to_numpy() > limit)
        report.skipped["larger than a nucleus"] = int(big.sum())
        keep &= ~big
    ids = edits["id"].to_numpy()[keep]
    drawn = pd.DataFrame(
        {
            L.CELL_ID: np.char.add("manual-", ids.astype(str)),
            L.CELL_TYPE: UNKNOWN,
            L.IMAGE_CLASS: edits[NucleusCols.CLASS_NAME].to_numpy()[keep],
            L.CONFIDENCE: np.float32(1.0),
            L.WEIGHT: np.float32(1.0),
            L.OBJECT_ID: ids,
            L.SOURCE: L.SOURCE_MANUAL,
        }
    )
    drawn = gpd.GeoDataFrame(drawn, geometry=gpd.GeoSeries(geoms[keep], index=drawn.index))
    for name, col in zip(classes.names, L.class_probs(classes.names), strict=True):
        if col in labels.columns:
            drawn[col] = (drawn[L.IMAGE_CLASS].to_numpy() == name).astype(np.float32)
    return drawn  # columns it lacks (type probabilities: no ST type) are NaN once concatenated


def _drawn_columns(classes: ClassTable) -> list[str]:
    return [L.CELL_ID, L.CELL_TYPE, L.IMAGE_CLASS, L.CONFIDENCE, L.WEIGHT, L.OBJECT_ID, L.SOURCE,
            L.GEOMETRY, *L.class_probs(classes.names)]  # fmt: skip


def merge_review(
    labels: gpd.GeoDataFrame, classes: ClassTable, edits: gpd.GeoDataFrame, *, source=None
) -> tuple[gpd.GeoDataFrame, ReviewReport]:
    """The LabelSet with a pathologist's edits (from :func:`read_review`) merged by object id;
    see the module docstring. ``source`` names the edited file in errors."""
    report = ReviewReport()
    out = labels.copy()
    out[L.OBJECT_ID] = labelset_object_ids(labels)
    if L.SOURCE not in out.columns:
        out[L.SOURCE] = L.SOURCE_ST
    out[L.SOURCE] = out[L.SOURCE].fillna(L.SOURCE_ST)
    edit_class = pd.Series(edits[NucleusCols.CLASS_NAME].to_numpy(), index=edits["id"].to_numpy())
    present = out[L.OBJECT_ID].isin(edit_class.index).to_numpy()
    if len(out) and len(edits) and not present.any():
        raise InputError(source, "no object matches the LabelSet: was it exported from this one?")
    report.deleted = int((~present).sum())
    out = out[present].copy()
    new = edit_class.loc[out[L.OBJECT_ID]].to_numpy()
    changed = new != out[L.IMAGE_CLASS].to_numpy()
    rows = out.index[changed]
    report.reclassified = int(changed.sum())
    report.kept = len(out) - report.reclassified
    pairs = pd.Series(out[L.IMAGE_CLASS].to_numpy()[changed] + " -> " + new[changed])
    report.changes = {str(k): int(v) for k, v in pairs.value_counts().items()}
    out.loc[rows, L.IMAGE_CLASS] = new[changed]
    out.loc[rows, [L.CONFIDENCE, L.WEIGHT]] = 1.0
    out.loc[rows, L.SOURCE] = L.SOURCE_REVIEWED
    _one_hot(out, classes, rows.to_numpy(), new[changed])
    drawn = edits[~edits["id"].isin(out[L.OBJECT_ID]).to_numpy()]
    added = _drawn_rows(drawn, out, classes, report)
    report.drawn = len(added)
    merged = out.reset_index(drop=True)
    if len(added):
        added = added.reindex(columns=merged.columns)
        for col in merged.columns.difference(_drawn_columns(classes)):
            if pd.api.types.is_float_dtype(merged[col]):  # NaN of the column's own type
                added[col] = added[col].astype(merged[col].dtype)
        merged = pd.concat([merged, added], ignore_index=True)
    return gpd.GeoDataFrame(merged, geometry=L.GEOMETRY), report


def st_typed(labels: pd.DataFrame) -> pd.DataFrame:
    """The rows whose class still comes from ST typing (for learning what the image shows of
    the ST types): drawn nuclei have no type, and a reclassified one's type was wrong."""
    if L.SOURCE not in labels.columns:
        return labels
    return labels[labels[L.SOURCE].fillna(L.SOURCE_ST).to_numpy() == L.SOURCE_ST]

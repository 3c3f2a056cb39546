"""LabelSet: ST nuclei as training labels in H&E level-0 pixels, one row per nucleus.

Columns (``wsi_stnuc.formats.LabelCols``): ``cell_id`` (str), ``geometry`` (Polygon, level-0
px), ``cell_type`` (str), ``image_class`` (class name or ``unknown``), ``confidence`` (0-1,
the typing confidence) and ``weight`` (0-1, trust in the polygon: 1 here, lowered by
:func:`wsi_stnuc.taxonomy.label_confidence.label_weights`). Every polygon is drawn into the training
targets whatever its weights; ``wsi_stnuc.training.targets`` turns ``weight`` into the per-pixel weight
of every loss term (inside the nucleus and in a band around its outline) and ``confidence``
into the weight of the class terms. When the typing gives probabilities, optional columns
``type_prob_<type>`` (per fine type) and ``prob_<class>`` (their sums per image class under the
taxonomy; :func:`wsi_stnuc.st.celltype.class_probabilities`) carry them: the soft class
targets of ``wsi-stnuc train --soft-classes``. Saved as GeoParquet with the class table and provenance in
the ``wsi_stnuc`` metadata key: ``{"kind": "labelset", "classes": ClassTable.to_dict(), ...}``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from wsi_stnuc.classes import UNKNOWN, ClassTable, Taxonomy
from wsi_stnuc.errors import InputError
from wsi_stnuc.formats import LabelCols as L
from wsi_stnuc.st.align import apply_affine, check_affine, transform_geometries
from wsi_stnuc.st.bundle import STBundle
from wsi_stnuc.st.celltype import (
    Method,
    class_probabilities,
    image_classes,
    map_to_classes,
    type_cells,
    type_probabilities,
)
from wsi_stnuc.st.panels import Panel
from wsi_stnuc.st.qc import QCReport, qc_cells

log = logging.getLogger(__name__)

LABELSET_KIND = "labelset"
COLUMNS = (L.CELL_ID, L.CELL_TYPE, L.IMAGE_CLASS, L.CONFIDENCE, L.WEIGHT, L.GEOMETRY)


def _prob_columns(
    labels: pd.DataFrame, prefixes: tuple[str, ...] = (L.TYPE_PROB_PREFIX, L.CLASS_PROB_PREFIX)
) -> list[str]:
    return [c for c in labels.columns if isinstance(c, str) and c.startswith(prefixes)]


def _class_prob_frame(type_probs: pd.DataFrame, taxonomy: Taxonomy, index) -> pd.DataFrame:
    values = class_probabilities(type_probs, taxonomy)
    return pd.DataFrame(values, index=index, columns=L.class_probs(taxonomy.classes.names))


@dataclass
class LabelReport:
    """What happened to the cells on their way to labels."""

    cells_in: int
    qc: QCReport
    low_confidence: int
    unmapped: int
    per_class: dict[str, int] = field(default_factory=dict)
    n_labels: int = 0
    residual_before_um: float | None = None
    residual_after_um: float | None = None
    matrix: list[list[float]] | None = None
    off_nucleus: int | None = None  # set by recount_classes after H&E support weighting
    registration_qc: dict | None = None  # wsi_stnuc.st.registration_qc.RegistrationQC.to_dict

    def recount_classes(self, labels: pd.DataFrame, classes: ClassTable) -> None:
        """Count the classes again from ``labels`` (after they changed, e.g. polygons off
        their nucleus sent to ``unknown``), so the report matches the file written."""
        before = self.per_class.get(UNKNOWN, 0)
        per_class = labels[L.IMAGE_CLASS].value_counts()
        self.per_class = {c: int(per_class.get(c, 0)) for c in (*classes.names, UNKNOWN)}
        self.off_nucleus = self.per_class[UNKNOWN] - before
        self.n_labels = len(labels)

    def to_frame(self) -> pd.DataFrame:
        rows = [("cells in", self.cells_in)]
        rows += [(f"dropped: {k}", v) for k, v in self.qc.dropped.items()]
        rows += [("cells after QC", self.qc.n_out)]
        rows += [("unknown: low confidence", self.low_confidence)]
        rows += [("unknown: type not in taxonomy", self.unmapped)]
        if self.off_nucleus is not None:
            rows += [("unknown: off their nucleus (H&E)", self.off_nucleus)]
        rows += [(f"class: {k}", v) for k, v in self.per_class.items()]
        rows += [("nuclei labelled", self.n_labels)]
        return pd.DataFrame(rows, columns=["step", "count"]).set_index("step")

    def __str__(self) -> str:
        text = self.to_frame().to_string()
        if self.residual_before_um is not None:
            text += (
                f"\nregistration: median residual {self.residual_before_um:.2f} µm -> "
                f"{self.residual_after_um:.2f} µm"
            )
        return text

    def to_dict(self) -> dict:
        return {
            "cells_in": self.cells_in,
            "qc_dropped": self.qc.dropped,
            "cells_after_qc": self.qc.n_out,
            "low_confidence": self.low_confidence,
            "unmapped": self.unmapped,
            "per_class": self.per_class,
            "n_labels": self.n_labels,
            "residual_before_um": self.residual_before_um,
            "residual_after_um": self.residual_after_um,
            "matrix": self.matrix,
            "off_nucleus": self.off_nucleus,
            "registration_qc": self.registration_qc,
        }


def _slide_frame(slide) -> tuple[object | None, tuple[int, int] | None]:
    if slide is None:
        return None, None
    if isinstance(slide, (str, Path)):
        from wsi_stnuc.slide.registry import open_slide

        slide = open_slide(slide)
    return slide, tuple(slide.dimensions)


def slide_bounds_um(matrix: np.ndarray, dimensions: tuple[int, int]) -> shapely.Polygon:
    """The slide rectangle (level-0 ``[0, w) x [0, h)``) mapped back into the ST µm frame."""
    w, h = dimensions
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    return shapely.Polygon(apply_affine(np.linalg.inv(matrix), corners))


def build_labelset(
    bundle: STBundle,
    slide,
    matrix: np.ndarray,
    taxonomy: Taxonomy,
    *,
    typing: Method = "panel",
    panel: Panel | str | None = None,
    reference: ad.AnnData | None = None,
    types: pd.DataFrame | None = None,
    min_confidence: float = 0.2,
    refine: bool = True,
    min_counts: int = 10,
    min_genes: int = 3,
    nucleus_area_um2: tuple[float, float] = (5.0, 400.0),
    smooth_k: int = 30,
) -> tuple[gpd.GeoDataFrame, LabelReport]:
    """Turn an ST bundle into a LabelSet on the H&E slide.

    Args:
        bundle: the ST cells (µm).
        slide: a SlideReader or slide path (for bounds and refinement), or ``None`` (no
            outside-slide test, no refinement).
        matrix: 3x3 affine **ST µm -> H&E level-0 px** (see
            :func:`wsi_stnuc.st.align.microns_to_slide_matrix`).
        taxonomy: fine cell type -> image class.
        typing, panel, reference, smooth_k: cell typing (see
            :func:`wsi_stnuc.st.celltype.type_cells`), unless ``types`` (a DataFrame indexed by
            cell_id with ``cell_type`` and ``confidence``) is given.
        min_confidence: below it a cell's image class is ``unknown``.
        refine: refine ``matrix`` from the H&E nuclei (needs ``slide``).
        min_counts, min_genes, nucleus_area_um2: QC (see :func:`wsi_stnuc.st.qc.qc_cells`).

    Returns:
        ``(labels, report)``.
    """
    a = check_affine(matrix)
    slide, dims = _slide_frame(slide)
    bounds = slide_bounds_um(a, dims) if dims is not None else None
    cells_in = bundle.n_cells
    kept, qc_report = qc_cells(
        bundle,
        min_counts=min_counts,
        min_genes=min_genes,
        nucleus_area_um2=nucleus_area_um2,
        slide_bounds=bounds,
    )
    if kept.n_cells == 0:
        raise InputError(bundle.source, f"no cell survives QC:\n{qc_report}")

    before = after = None
    if refine and slide is not None:
        from wsi_stnuc.st.refine import refine_alignment

        cents = shapely.centroid(np.asarray(kept.nuclei.geometry.values))
        xy = np.column_stack([shapely.get_x(cents), shapely.get_y(cents)])
        result = refine_alignment(slide, xy, a)
        a, before, after = result.matrix, result.before_um, result.after_um

    if types is None:
        types = type_cells(kept.adata, typing, panel=panel, reference=reference, smooth_k=smooth_k)
    missing = ~kept.adata.obs_names.isin(types.index)
    if missing.any():
        raise InputError(None, f"cell types missing for {int(missing.sum())} cells")
    if not types.index.equals(kept.adata.obs_names):
        types = types.loc[kept.adata.obs_names]
    classes = image_classes(types, taxonomy, min_confidence=min_confidence)

    nuclei = kept.nuclei
    pos = pd.Index(types.index).get_indexer(nuclei[L.CELL_ID].astype(str))
    conf = np.clip(types["confidence"].to_numpy(np.float64), 0.0, 1.0)
    geoms = transform_geometries(np.asarray(nuclei.geometry.values), a)
    labels = gpd.GeoDataFrame(
        {
            L.CELL_ID: nuclei[L.CELL_ID].astype(str).to_numpy(),
            L.CELL_TYPE: types["cell_type"].astype(str).to_numpy()[pos],
            L.IMAGE_CLASS: classes.to_numpy()[pos],
            L.CONFIDENCE: conf[pos].astype(np.float32),
            # The outline is as good as the segmentation, whatever the type's confidence:
            # confidence weights the class loss only (Targets.cls_weight).
            L.WEIGHT: np.ones(len(pos), np.float32),
        },
        geometry=geoms,
    )
    type_probs = type_probabilities(types)
    if type_probs is not None:
        probs = type_probs.iloc[pos]
        probs.index = labels.index
        labels = pd.concat(
            [
                labels,
                probs.add_prefix(L.TYPE_PROB_PREFIX),
                _class_prob_frame(probs, taxonomy, labels.index),
            ],
            axis=1,
        )
    mapped = map_to_classes(types["cell_type"], taxonomy)
    unmapped = int((mapped == UNKNOWN).sum())
    low = int(((mapped != UNKNOWN) & (classes == UNKNOWN)).sum())
    per_class = {c: int((classes == c).sum()) for c in (*taxonomy.classes.names, UNKNOWN)}
    report = LabelReport(
        cells_in=cells_in,
        qc=qc_report,
        low_confidence=low,
        unmapped=unmapped,
        per_class=per_class,
        n_labels=len(labels),
        residual_before_um=before,
        residual_after_um=after,
        matrix=a.tolist(),
    )
    return labels, report


def write_labelset(
    labels: gpd.GeoDataFrame,
    path: str | Path,
    classes: ClassTable,
    *,
    extra: dict | None = None,
) -> Path:
    """Write a LabelSet as GeoParquet (atomic) with the class table under ``wsi_stnuc``."""
    from wsi_stnuc.export.geoparquet import write_geoparquet

    missing = [c for c in COLUMNS if c not in labels.columns]
    if missing:
        raise InputError(path, f"not a LabelSet: missing column(s) {missing}")
    bad = ~labels[L.IMAGE_CLASS].isin([*classes.names, UNKNOWN])
    if bad.any():
        raise InputError(
            path,
            f"image classes not in the class table: {sorted(labels[L.IMAGE_CLASS][bad].unique())}",
        )
    class_probs = _prob_columns(labels, (L.CLASS_PROB_PREFIX,))
    if class_probs and class_probs != L.class_probs(classes.names):
        raise InputError(
            path,
            f"class probability columns {class_probs} do not match the class table "
            f"{list(classes.names)}: re-class the LabelSet with apply_taxonomy",
        )
    meta = {"kind": LABELSET_KIND, "classes": classes.to_dict(), **(extra or {})}
    review = [c for c in (L.OBJECT_ID, L.SOURCE) if c in labels.columns]
    keep = [*COLUMNS[:-1], *_prob_columns(labels), *review, L.GEOMETRY]
    return write_geoparquet(labels[keep], path, metadata=meta)


def apply_taxonomy(
    labels: gpd.GeoDataFrame, taxonomy: Taxonomy, *, min_confidence: float = 0.2
) -> gpd.GeoDataFrame:
    """The LabelSet re-classed under ``taxonomy`` (e.g. one learned by ``wsi-stnuc taxonomy``).

    ``image_class`` becomes the taxonomy's class of ``cell_type`` (``unknown`` below
    ``min_confidence``). A cell the LabelSet made ``unknown`` although other cells of its type
    have a class was set aside for itself (low confidence, polygon off its nucleus:
    :func:`wsi_stnuc.taxonomy.label_confidence.label_weights`) and stays ``unknown``; cells of a type
    the old taxonomy left unmapped get the new one's class. A class a pathologist set
    (``source`` reviewed or manual, :mod:`wsi_stnuc.st.review`) stays where the new table has
    it and becomes ``unknown`` where not. ``prob_<class>`` columns are recomputed from the
    ``type_prob_<type>`` ones (one-hot for the pathologist's rows; dropped when there are none).
    """
    for col in (L.CELL_TYPE, L.IMAGE_CLASS, L.CONFIDENCE):
        if col not in labels.columns:
            raise InputError(None, f"LabelSet lacks the '{col}' column")
    types = labels[L.CELL_TYPE].astype(str)
    was_unknown = (labels[L.IMAGE_CLASS] == UNKNOWN).to_numpy()
    classed_types = types[~was_unknown].unique()
    set_aside = was_unknown & types.isin(classed_types).to_numpy()
    confident = labels[L.CONFIDENCE].fillna(0.0).to_numpy() >= min_confidence
    mapped = map_to_classes(types, taxonomy).to_numpy(object)
    out = labels.drop(columns=_prob_columns(labels, (L.CLASS_PROB_PREFIX,)))
    out[L.IMAGE_CLASS] = np.where(confident & ~set_aside, mapped, UNKNOWN)
    # a pathologist's class (wsi-stnuc review) stands where the new table has it
    judged = _judged(labels)
    kept = np.where(labels[L.IMAGE_CLASS].isin(taxonomy.classes.names), labels[L.IMAGE_CLASS], UNKNOWN)
    out.loc[judged, L.IMAGE_CLASS] = kept[judged]
    type_probs = type_probabilities(labels)
    if type_probs is None:
        return out
    probs = _class_prob_frame(type_probs.fillna(0.0), taxonomy, out.index)
    for name, col in zip(taxonomy.classes.names, probs.columns, strict=True):
        probs.loc[judged, col] = (out[L.IMAGE_CLASS].to_numpy()[judged] == name).astype(np.float32)
    return pd.concat([out, probs], axis=1)


def _judged(labels: pd.DataFrame) -> np.ndarray:
    """Rows whose class a pathologist set (``source`` reviewed or manual)."""
    if L.SOURCE not in labels.columns:
        return np.zeros(len(labels), dtype=bool)
    return labels[L.SOURCE].isin([L.SOURCE_REVIEWED, L.SOURCE_MANUAL]).to_numpy()


def read_labelset(path: str | Path) -> tuple[gpd.GeoDataFrame, ClassTable]:
    """Read a LabelSet written by :func:`write_labelset`."""
    from wsi_stnuc.export.geoparquet import read_geoparquet_metadata

    path = Path(path)
    if not path.exists():
        raise InputError(path, "LabelSet file not found")
    meta = read_geoparquet_metadata(path)
    if meta.get("kind") != LABELSET_KIND or "classes" not in meta:
        raise InputError(path, "not a wsi-stnuc LabelSet (no class table in its metadata)")
    try:
        labels = gpd.read_parquet(path)
    except Exception as exc:  # pyarrow/geopandas raise several types for corrupt files
        raise InputError(path, f"cannot read LabelSet ({exc})") from exc
    missing = [c for c in COLUMNS if c not in labels.columns]
    if missing:
        raise InputError(path, f"LabelSet lacks column(s) {missing}")
    return labels, ClassTable.from_dict(meta["classes"])

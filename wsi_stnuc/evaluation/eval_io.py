"""Load predictions and references for evaluation, and evaluate one against the other.

Any of the formats nuclei come in is read into one :class:`Instances` value:

* GeoParquet (``.parquet``, ``.geoparquet``): our NucleusTable / LabelSet, or any polygon table;
* GeoJSON (``.geojson``, ``.json``, ``.zip``): a QuPath FeatureCollection or a plain feature
  list (for QuPath cells, the nucleus outline is used);
* label images: ``.tif``/``.tiff``/``.png`` (integer, 0 = background), ``.npy``, and ``.npz``
  with ``inst`` (or ``inst_map``) and optionally ``inst_type`` (class of instance ``i`` at
  ``i - 1``, CoNSeP) or ``type_map`` (pixel class map);
* MoNuSeg / Aperio ImageScope XML (``.xml``, ``.xml.gz``).

Polygons stay polygons and rasters stay rasters; :func:`evaluate` matches polygons with
polygons at slide scale and rasterises polygons only when the other side is a raster.
"""

from __future__ import annotations

import gzip
import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from wsi_stnuc.classes import ClassTable
from wsi_stnuc.errors import InputError
from wsi_stnuc.formats import LabelCols, NucleusCols, QuPath

log = logging.getLogger(__name__)

__all__ = [
    "Instances",
    "compare",
    "evaluate",
    "evaluate_set",
    "load_instances",
    "pair_files",
    "rasterize_polygons",
    "to_raster",
]

POLYGON_SUFFIXES = (".parquet", ".geoparquet", ".geojson", ".json", ".zip")
RASTER_SUFFIXES = (".tif", ".tiff", ".png", ".npy", ".npz")
XML_SUFFIXES = (".xml", ".xml.gz")
#: Class columns tried in order when none is named (NucleusTable, LabelSet, QuPath reader).
DEFAULT_CLASS_COLUMNS = (NucleusCols.CLASS_NAME, LabelCols.IMAGE_CLASS, NucleusCols.CLASS_ID)


@dataclass(frozen=True)
class Instances:
    """Nuclei of one image or slide, as a raster or as polygons (exactly one is set).

    ``inst``: ``H x W`` int32 label image; ``inst_class``: a class map of the same shape or a
    per-instance vector (class of id ``i`` at ``i - 1``), or None. ``polygons``: GeoDataFrame in
    level-0 px; ``class_column``: its class column, or None. ``mpp``: µm per pixel if known.
    ``classes``: the class table from the file's metadata, if any.
    """

    source: Path
    inst: np.ndarray | None = None
    inst_class: np.ndarray | None = None
    polygons: object | None = None  # geopandas.GeoDataFrame
    class_column: str | None = None
    mpp: float | None = None
    classes: ClassTable | None = None

    @property
    def is_raster(self) -> bool:
        return self.inst is not None

    def __len__(self) -> int:
        if self.inst is not None:
            return int(len(np.unique(self.inst[self.inst != 0])))
        return len(self.polygons)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".xml.gz" if name.endswith(".xml.gz") else path.suffix.lower()


def load_instances(
    path: str | Path,
    *,
    shape: tuple[int, int] | None = None,
    mpp: float | None = None,
    class_column: str | None = None,
) -> Instances:
    """Read nuclei from ``path`` (format by suffix, see the module docstring).

    ``shape`` (rows, cols) rasterises a polygon input right away (else polygons stay polygons);
    ``mpp`` overrides the file's own µm/px; ``class_column`` names the class column of a
    polygon table (default: the first of :data:`DEFAULT_CLASS_COLUMNS` present).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    suffix = _suffix(path)
    if suffix in (".parquet", ".geoparquet"):
        out = _load_geoparquet(path, class_column)
    elif suffix in (".geojson", ".json", ".zip"):
        out = _load_geojson(path, class_column)
    elif suffix in XML_SUFFIXES:
        out = _load_xml(path)
    elif suffix in RASTER_SUFFIXES:
        out = _load_raster(path)
    else:
        raise InputError(
            path,
            f"unknown nucleus file type {suffix!r}; expected one of "
            f"{', '.join(POLYGON_SUFFIXES + RASTER_SUFFIXES + XML_SUFFIXES)}",
        )
    if mpp is not None:
        if mpp <= 0:
            raise InputError(path, f"mpp must be positive, got {mpp}")
        out = replace(out, mpp=float(mpp))
    if shape is not None and not out.is_raster:
        out = to_raster(out, shape)
    return out


# --------------------------------------------------------------------------------------------
# Readers


def _pick_class_column(path: Path, gdf, class_column: str | None) -> str | None:
    if class_column is not None:
        if class_column not in gdf.columns:
            raise InputError(path, f"no class column {class_column!r} (has {list(gdf.columns)})")
        return class_column
    for col in DEFAULT_CLASS_COLUMNS:
        if col in gdf.columns and gdf[col].notna().any():
            return col
    return None


def _check_polygons(path: Path, gdf):
    import shapely

    if gdf.geometry is None or len(gdf) == 0:
        return gdf
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    keep = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    kinds = shapely.get_type_id(geoms[keep])
    if np.any((kinds != 3) & (kinds != 6)):  # Polygon, MultiPolygon
        raise InputError(path, "nuclei must be Polygon or MultiPolygon geometries")
    if not keep.all():
        log.warning("%s: %d rows without geometry ignored", path, int((~keep).sum()))
    return gdf[keep].reset_index(drop=True)


def _load_geoparquet(path: Path, class_column: str | None) -> Instances:
    import geopandas as gpd

    from wsi_stnuc.export.geoparquet import read_geoparquet_metadata

    try:
        gdf = gpd.read_parquet(path)
    except Exception as exc:  # pyarrow/geopandas raise many types for a bad file
        raise InputError(path, f"cannot read GeoParquet ({exc})") from exc
    meta = read_geoparquet_metadata(path)
    table = meta if isinstance(meta, list) else meta.get("classes")
    classes = ClassTable.from_dict(table) if table else None
    mpp = _metadata_mpp(meta)
    gdf = _check_polygons(path, gdf)
    return Instances(
        path,
        polygons=gdf,
        class_column=_pick_class_column(path, gdf, class_column),
        mpp=mpp,
        classes=classes,
    )


def _metadata_mpp(meta) -> float | None:
    """Level-0 µm/px from our GeoParquet metadata (``infer`` writes ``slide.mpp = [x, y]``)."""
    if not isinstance(meta, dict):
        return None
    slide = meta.get("slide")
    value = slide.get("mpp") if isinstance(slide, dict) else meta.get("slide_mpp")
    if value is None:
        return None
    values = np.atleast_1d(np.asarray(value, dtype=float))
    if len(values) > 1 and not np.isclose(values[0], values[-1], rtol=1e-3):
        log.warning("anisotropic pixels %s µm; using their mean for distances", values.tolist())
    return float(values.mean())


def _load_geojson(path: Path, class_column: str | None) -> Instances:
    import geopandas as gpd

    from wsi_stnuc.export.qupath import read_qupath_geojson

    gdf = read_qupath_geojson(path)
    if "nucleus_geometry" in gdf.columns:
        # QuPath cells: evaluate the nucleus, not the cell outline.
        nuc = gpd.GeoSeries(gdf["nucleus_geometry"], index=gdf.index)
        nuc = nuc.where(nuc.notna() & ~nuc.is_empty, gdf.geometry)
        gdf = gdf.drop(columns="nucleus_geometry").set_geometry(nuc.rename(gdf.geometry.name))
    if QuPath.OBJECT_TYPE in gdf.columns:
        gdf = gdf[gdf[QuPath.OBJECT_TYPE] != QuPath.ANNOTATION]  # regions, not nuclei
    gdf = _check_polygons(path, gdf.reset_index(drop=True))
    return Instances(path, polygons=gdf, class_column=_pick_class_column(path, gdf, class_column))


def _load_raster(path: Path) -> Instances:
    suffix = _suffix(path)
    inst_class = None
    mpp = None
    try:
        if suffix == ".npz":
            with np.load(path) as z:
                key = next((k for k in ("inst", "inst_map") if k in z.files), None)
                if key is None:
                    raise InputError(path, f"npz has no 'inst' or 'inst_map' array ({z.files})")
                inst = z[key]
                if "inst_type" in z.files:
                    inst_class = np.asarray(z["inst_type"]).reshape(-1).astype(np.int64)
                elif "type_map" in z.files:
                    inst_class = np.asarray(z["type_map"]).astype(np.int64)
        elif suffix == ".npy":
            inst = np.load(path)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                inst = tif.pages[0].asarray()
                mpp = _tiff_mpp(tif.pages[0])
        else:
            from PIL import Image

            with Image.open(path) as im:
                inst = np.asarray(im)
    except InputError:
        raise
    except Exception as exc:  # decoders raise many types for a bad file
        raise InputError(path, f"cannot read label image ({exc})") from exc
    inst = np.squeeze(inst)
    if inst.ndim != 2 or not np.issubdtype(inst.dtype, np.integer):
        raise InputError(
            path,
            f"a label image must be 2-D integer (0 = background), got {inst.dtype} {inst.shape}",
        )
    if inst.min() < 0:
        raise InputError(path, "label image has negative labels")
    if inst_class is not None and inst_class.ndim == 2 and inst_class.shape != inst.shape:
        raise InputError(path, f"type_map {inst_class.shape} differs from inst {inst.shape}")
    if inst_class is not None and inst_class.ndim == 1 and inst.max() > len(inst_class):
        raise InputError(
            path, f"inst_type has {len(inst_class)} entries but the map has label {inst.max()}"
        )
    return Instances(path, inst=inst.astype(np.int32), inst_class=inst_class, mpp=mpp)


def _tiff_mpp(page) -> float | None:
    # Resolution tags in pixels per centimetre (unit 3) or inch (unit 2).
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    num, den = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value)
    if not num or unit not in (2, 3):
        return None
    um_per_unit = 25400.0 if unit == 2 else 10000.0
    return um_per_unit * den / num


def _xml_mpp(path: Path) -> float | None:
    """The ``MicronsPerPixel`` attribute of an ImageScope XML's root (read from the first tag)."""
    opener = gzip.open if _suffix(path) == ".xml.gz" else open
    try:
        with opener(path, "rb") as fh:
            _, root = next(ET.iterparse(fh, events=("start",)))
    except (OSError, ET.ParseError, EOFError, StopIteration):
        return None  # the full parse below reports a broken file
    value = root.get("MicronsPerPixel")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _load_xml(path: Path) -> Instances:
    import geopandas as gpd

    from wsi_stnuc.evaluation.annotated import read_monuseg_xml

    # MoNuSeg vertices are pixel indices; the reader shifts them into our pixel-corner frame.
    geoms = read_monuseg_xml(path)
    gdf = gpd.GeoDataFrame(geometry=gpd.GeoSeries(list(geoms)))
    return Instances(path, polygons=_check_polygons(path, gdf), mpp=_xml_mpp(path))


# --------------------------------------------------------------------------------------------
# Rasterising


def rasterize_polygons(geoms, shape: tuple[int, int]) -> np.ndarray:
    """Label image (int32, ids = row position + 1) of polygons in pixel coordinates.

    A pixel belongs to a polygon when its centre ``(j + 0.5, i + 0.5)`` lies inside (as
    ``wsi_stnuc.training.targets``); where polygons overlap the later one wins. Only raster-sized inputs
    come here (the polygon side of a raster comparison), so one scanline fill per polygon is
    fine.
    """
    import shapely
    from skimage.draw import polygon as draw_polygon

    out = np.zeros(shape, np.int32)
    geoms = np.asarray(geoms, dtype=object)
    for k, geom in enumerate(geoms):
        parts = getattr(geom, "geoms", [geom])
        for part in parts:
            ext = shapely.get_coordinates(part.exterior)
            rr, cc = draw_polygon(ext[:, 1] - 0.5, ext[:, 0] - 0.5, shape)
            hole_mask = None
            for ring in part.interiors:
                h = shapely.get_coordinates(ring)
                hr, hc = draw_polygon(h[:, 1] - 0.5, h[:, 0] - 0.5, shape)
                if hole_mask is None:
                    hole_mask = np.zeros(shape, bool)
                hole_mask[hr, hc] = True
            if hole_mask is not None:
                keep = ~hole_mask[rr, cc]
                rr, cc = rr[keep], cc[keep]
            out[rr, cc] = k + 1
    return out


def _class_values(inst: Instances) -> np.ndarray | None:
    if inst.class_column is None:
        return None
    from wsi_stnuc.evaluation.metrics import class_values

    return class_values(inst.polygons[inst.class_column])


def to_raster(inst: Instances, shape: tuple[int, int]) -> Instances:
    """A polygon :class:`Instances` rasterised onto ``shape`` (classes as a per-instance vector)."""
    if inst.is_raster:
        return inst
    cls = _class_values(inst)
    if cls is not None and cls.dtype.kind not in "iu":
        if inst.classes is None:
            log.warning("%s: text classes without a class table; classes dropped", inst.source)
            cls = None
        else:
            cls = np.asarray(inst.classes.ids_of(cls.tolist()), dtype=np.int64)
    labels = rasterize_polygons(inst.polygons.geometry.values, shape)
    # Polygons too small to cover a pixel centre vanish; keep ids aligned with the vector anyway.
    return Instances(inst.source, inst=labels, inst_class=cls, mpp=inst.mpp, classes=inst.classes)


# --------------------------------------------------------------------------------------------
# Evaluate


def _resolve_mpp(pred: Instances, ref: Instances, mpp: float | None) -> float:
    if mpp is not None:
        return float(mpp)
    found = [x.mpp for x in (ref, pred) if x.mpp is not None]
    if not found:
        raise InputError(
            ref.source, "pixel size unknown (no resolution in the files); pass mpp / --mpp"
        )
    if len(found) == 2 and not np.isclose(found[0], found[1], rtol=1e-3):
        log.warning("reference mpp %.4g and prediction mpp %.4g differ; using the reference's",
                    found[0], found[1])  # fmt: skip
    return float(found[0])


# share of a polygon side that may lie outside the label image before the pairing is refused
# as a frame mismatch (e.g. slide-wide predictions against the label image of one ROI)
MAX_OUTSIDE_SHARE = 0.5


def _check_inside(side: Instances, shape: tuple[int, int], raster_source) -> None:
    """Polygons rasterised onto a label image lose whatever falls outside it: warn about a
    few, refuse when most are outside (the two are not in the same frame)."""
    import shapely

    geoms = side.polygons.geometry.to_numpy()
    if len(geoms) == 0:
        return
    c = shapely.get_coordinates(shapely.centroid(geoms))
    rows, cols = shape
    outside = int(((c[:, 0] < 0) | (c[:, 0] >= cols) | (c[:, 1] < 0) | (c[:, 1] >= rows)).sum())
    if outside == 0:
        return
    msg = (f"{outside} of {len(geoms)} polygons lie outside the {cols} x {rows} px label image "
           f"{raster_source}")  # fmt: skip
    if outside > MAX_OUTSIDE_SHARE * len(geoms):
        raise InputError(side.source, msg + "; are both in the same pixel frame? Crop the "
                         "polygons to the image or compare polygons with polygons")  # fmt: skip
    log.warning("%s: %s; they are left out of the scores", side.source, msg)


def compare(pred: Instances, ref: Instances):
    """A :class:`wsi_stnuc.evaluation.metrics.Comparison` of ``pred`` against ``ref`` and its mode.

    Both polygon: polygon matching (slide scale), ``"polygon"``. Otherwise the polygon side is
    rasterised onto the raster side's shape, ``"raster"``.
    """
    from wsi_stnuc.evaluation import metrics

    if not pred.is_raster and not ref.is_raster:
        tc, pc = ref.class_column, pred.class_column
        col = (tc, pc) if tc is not None and pc is not None else None
        return metrics.compare_polygons(ref.polygons, pred.polygons, col), "polygon"
    shape = (ref.inst if ref.is_raster else pred.inst).shape
    raster = ref if ref.is_raster else pred
    for side in (ref, pred):
        if not side.is_raster:
            _check_inside(side, shape, raster.source)
    ref_r, pred_r = to_raster(ref, shape), to_raster(pred, shape)
    if ref_r.inst.shape != pred_r.inst.shape:
        raise InputError(
            pred.source,
            f"label image {pred_r.inst.shape} differs from reference {ref_r.inst.shape}",
        )
    tcls, pcls = ref_r.inst_class, pred_r.inst_class
    if tcls is None or pcls is None:
        tcls = pcls = None
    return metrics.compare_instances(ref_r.inst, pred_r.inst, tcls, pcls), "raster"


def evaluate(
    pred: Instances,
    ref: Instances,
    *,
    mpp: float | None = None,
    radius_um: float = 3.0,
    classes: list | None = None,
    iou_threshold: float = 0.5,
) -> dict:
    """Every metric of ``pred`` against ``ref`` (see :mod:`wsi_stnuc.evaluation.metrics`).

    ``mpp`` (µm/px) defaults to the files' own. Class metrics are computed when both sides have
    classes (default classes: the reference's class table, else its classes other than
    background and ``unknown``). The result also names the matching ``mode`` (:func:`compare`).
    """
    return evaluate_set(
        [(pred, ref)], mpp=mpp, radius_um=radius_um, classes=classes, iou_threshold=iou_threshold
    )["summary"]


def evaluate_set(
    pairs: Sequence[tuple[Instances, Instances]],
    *,
    mpp: float | None = None,
    radius_um: float = 3.0,
    classes: list | None = None,
    iou_threshold: float = 0.5,
) -> dict:
    """Metrics of several (prediction, reference) pairs, per image and over the set.

    Returns ``dict(images=[{"pred", "ref", **metrics}], summary={...})``; the summary
    aggregates as :func:`wsi_stnuc.evaluation.metrics.summarize` (means over images for PQ/AJI/Dice,
    pooled pairs for F1d and F_c, mPQ and mPQ+ across images).
    """
    from wsi_stnuc.evaluation.metrics import summarize

    if not pairs:
        raise ValueError("evaluate_set: no (prediction, reference) pairs given")
    comps, mpps, modes, rows = [], [], set(), []
    kw = {"radius_um": radius_um, "iou_threshold": iou_threshold}
    if classes is None:
        table = next((r.classes for _, r in pairs if r.classes is not None), None)
        classes = list(table.names) if table is not None and _text_classes(pairs) else None
    for pred, ref in pairs:
        comp, mode = compare(pred, ref)
        m = _resolve_mpp(pred, ref, mpp)
        comps.append(comp)
        mpps.append(m)
        modes.add(mode)
        row = summarize([comp], mpp=m, classes=classes, **kw)
        rows.append({"pred": str(pred.source), "ref": str(ref.source), "mode": mode, **row})
    summary = summarize(comps, mpp=mpps, classes=classes, **kw)
    summary["mode"] = "+".join(sorted(modes))
    return {"images": rows, "summary": summary}


def _text_classes(pairs) -> bool:
    # A class table names classes; it applies directly when both sides compare as text.
    return all(not p.is_raster and not r.is_raster for p, r in pairs)


def pair_files(pred_dir: str | Path, ref_dir: str | Path) -> list[tuple[Path, Path]]:
    """Pair the nucleus files of two folders by name (suffixes ignored: ``a.npz`` ~ ``a.xml.gz``).

    References without a prediction are an error (a missing prediction would silently raise
    the scores); extra predictions are ignored with a warning.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    known = POLYGON_SUFFIXES + RASTER_SUFFIXES + XML_SUFFIXES

    def stems(folder: Path) -> dict[str, Path]:
        out = {}
        for f in sorted(folder.iterdir()):
            suffix = _suffix(f)
            if f.is_file() and suffix in known:
                out[f.name[: -len(suffix)]] = f
        return out

    preds, refs = stems(pred_dir), stems(ref_dir)
    if not refs:
        raise InputError(ref_dir, "no nucleus files (GeoParquet, GeoJSON, label images, XML)")
    missing = sorted(set(refs) - set(preds))
    if missing:
        raise InputError(pred_dir, f"no prediction for {len(missing)} references: {missing[:5]}")
    extra = sorted(set(preds) - set(refs))
    if extra:
        log.warning("%s: %d predictions without a reference ignored", pred_dir, len(extra))
    return [(preds[name], refs[name]) for name in sorted(refs)]

"""Readers for real H&E images with manual nucleus annotations (CoNSeP, MoNuSeg).

Each image becomes an :class:`AnnotatedImage`: RGB, an instance map (0 background, 1..N), the
class of each instance where the dataset has classes, and the source image it was cut from,
so that train/test splits can be made by source image (patches of one image overlap).
"""

from __future__ import annotations

import gzip
import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from skimage.draw import polygon as fill_polygon
from skimage.io import imread

from wsi_stnuc.errors import InputError

log = logging.getLogger(__name__)

# HoVer-Net's merged CoNSeP classes (inst_type codes).
CONSEP_CLASSES: dict[int, str] = {1: "other", 2: "inflammatory", 3: "epithelial", 4: "spindle"}
CONSEP_MPP = 0.25  # 40x scans; CoNSeP ships no per-image resolution
MONUSEG_MPP = 0.25  # nominal; the XML's MicronsPerPixel attribute wins when present
_PATCH_SUFFIX = re.compile(r"^(?P<source>.+?)_(?P<index>\d+)$")


@dataclass
class AnnotatedImage:
    """One annotated H&E image.

    ``inst`` is int32 (0 background, ids 1..N). ``inst_class[i]`` is the class code of
    instance ``i`` (index 0 unused, 0 = no class), or ``None`` for datasets without classes;
    ``class_names`` maps codes to names. ``source_image`` names the original image a patch was
    cut from. Geometry convention: pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)``.
    """

    name: str
    rgb: np.ndarray
    inst: np.ndarray
    inst_class: np.ndarray | None
    class_names: dict[int, str] = field(default_factory=dict)
    mpp: float = CONSEP_MPP
    source_image: str = ""

    @property
    def n_instances(self) -> int:
        return int(self.inst.max())

    def instance_ids(self) -> np.ndarray:
        """Ids present in ``inst`` (sorted, without 0)."""
        ids = np.unique(self.inst)
        return ids[ids > 0]

    def class_names_of(self, ids: np.ndarray) -> np.ndarray:
        """Class names of instance ``ids`` (``'unknown'`` without classes or for code 0)."""
        if self.inst_class is None:
            return np.full(len(ids), "unknown", dtype=object)
        lookup = np.array(
            ["unknown"] + [self.class_names.get(c, "unknown") for c in range(1, 256)], dtype=object
        )
        return lookup[self.inst_class[np.asarray(ids)]]


def source_of_patch(name: str) -> str:
    """Source image of a patch name: ``train_10_003`` -> ``train_10`` (else the name itself)."""
    m = _PATCH_SUFFIX.match(name)
    return m.group("source") if m else name


def _names(folder: Path, pattern: str, names: list[str] | None) -> list[str]:
    if not folder.is_dir():
        raise InputError(folder, "folder not found")
    found = sorted(p.name.split(".")[0] for p in folder.glob(pattern))
    if names is None:
        if not found:
            raise InputError(folder, f"no files matching {pattern}")
        return found
    missing = sorted(set(names) - set(found))
    if missing:
        raise InputError(folder, f"images not found: {missing[:5]}")
    return list(names)


def _read_rgb(path: Path) -> np.ndarray:
    try:
        rgb = imread(path)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read image ({exc})") from exc
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise InputError(path, f"expected an RGB image, got shape {rgb.shape}")
    return np.ascontiguousarray(rgb[..., :3]).astype(np.uint8)


def load_consep(
    folder: str | Path, names: list[str] | None = None, *, mpp: float = CONSEP_MPP
) -> list[AnnotatedImage]:
    """CoNSeP patches: ``images/NAME.jpg`` + ``labels/NAME.npz`` (``inst``, ``inst_type``)."""
    root = Path(folder)
    out = []
    for name in _names(root / "images", "*.jpg", names):
        label_path = root / "labels" / f"{name}.npz"
        try:
            with np.load(label_path) as z:
                inst = z["inst"].astype(np.int32)
                types = z["inst_type"].astype(np.uint8).ravel()
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(label_path, f"cannot read CoNSeP labels ({exc})") from exc
        rgb = _read_rgb(root / "images" / f"{name}.jpg")
        if inst.shape != rgb.shape[:2]:
            raise InputError(label_path, f"inst {inst.shape} does not match image {rgb.shape}")
        n = int(inst.max())
        if len(types) < n:
            raise InputError(label_path, f"inst_type has {len(types)} entries for {n} instances")
        inst_class = np.concatenate([[0], types[:n]]).astype(np.uint8)
        out.append(
            AnnotatedImage(
                name, rgb, inst, inst_class, dict(CONSEP_CLASSES), mpp, source_of_patch(name)
            )
        )
    log.info("loaded %d CoNSeP images from %s", len(out), root)
    return out


def _xml_regions(path: Path) -> tuple[list[np.ndarray], float | None]:
    """Vertex arrays (x, y as written) of every Region, and the file's MicronsPerPixel."""
    try:
        with gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as f:
            root = ET.parse(f).getroot()
    except (OSError, ET.ParseError, EOFError) as exc:
        raise InputError(path, f"cannot parse Aperio XML ({exc})") from exc
    mpp_attr = root.get("MicronsPerPixel")
    regions = []
    for region in root.iter("Region"):
        xy = [(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")]
        regions.append(np.asarray(xy, dtype=np.float64).reshape(-1, 2))
    return regions, (float(mpp_attr) if mpp_attr else None)


def _usable(path: Path, regions: list[np.ndarray]) -> list[np.ndarray]:
    kept = [r for r in regions if len(r) >= 3]
    if len(kept) < len(regions):
        log.info("%s: skipped %d regions with < 3 vertices", path, len(regions) - len(kept))
    return kept


def _rasterize_regions(regions: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    inst = np.zeros(shape, dtype=np.int32)
    for i, xy in enumerate(regions, start=1):  # one fill per region of one image
        rr, cc = fill_polygon(xy[:, 1], xy[:, 0], shape)
        inst[rr, cc] = i
    return inst


def read_monuseg_xml(
    path: str | Path, shape: tuple[int, int] | None = None
) -> list[shapely.Polygon] | np.ndarray:
    """Nuclei of an Aperio ImageScope XML (``Region`` -> ``Vertices`` -> ``Vertex X= Y=``).

    Regions with fewer than 3 vertices are skipped. Vertices are pixel indices as in MoNuSeg's
    own mask code, so polygons are shifted by +0.5 into our pixel-corner frame. Without
    ``shape`` returns valid polygons in file order (self-intersections repaired, largest part
    kept); with ``shape`` returns an int32 instance map rasterised like the official masks
    (ids in file order, later regions win where they overlap).
    """
    path = Path(path)
    regions, _ = _xml_regions(path)
    kept = _usable(path, regions)
    if shape is not None:
        return _rasterize_regions(kept, shape)
    if not kept:
        return []
    idx = np.repeat(np.arange(len(kept)), [len(r) for r in kept])
    polys = shapely.polygons(shapely.linearrings(np.concatenate(kept) + 0.5, indices=idx))
    bad = ~shapely.is_valid(polys)
    if bad.any():
        polys[bad] = _largest_polygon(shapely.make_valid(polys[bad]))
    return [p for p in polys if p is not None and not p.is_empty]


def _largest_polygon(geoms: np.ndarray) -> np.ndarray:
    parts, idx = shapely.get_parts(geoms, return_index=True)
    is_poly = shapely.get_type_id(parts) == 3
    parts, idx = parts[is_poly], idx[is_poly]
    out = np.full(len(geoms), None, dtype=object)
    order = np.lexsort((-shapely.area(parts), idx))
    first = np.unique(idx[order], return_index=True)[1]
    out[idx[order][first]] = parts[order][first]
    return out


def load_monuseg(folder: str | Path, names: list[str] | None = None) -> list[AnnotatedImage]:
    """MoNuSeg tiles: ``images/NAME.png`` + ``annotations/NAME.xml.gz`` (instances, no classes)."""
    root = Path(folder)
    out = []
    for name in _names(root / "images", "*.png", names):
        xml = root / "annotations" / f"{name}.xml.gz"
        if not xml.exists():
            xml = root / "annotations" / f"{name}.xml"
        rgb = _read_rgb(root / "images" / f"{name}.png")
        regions, mpp = _xml_regions(xml)
        inst = _rasterize_regions(_usable(xml, regions), rgb.shape[:2])
        out.append(AnnotatedImage(name, rgb, inst, None, {}, mpp or MONUSEG_MPP, name))
    log.info("loaded %d MoNuSeg images from %s", len(out), root)
    return out

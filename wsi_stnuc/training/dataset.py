"""Zarr patch dataset (one chunk per patch) and its torch ``Dataset``.

Layout of ``DS.zarr`` (a zarr group):

* ``images`` N x P x P x 3 uint8; ``inst`` N x P x P int32; ``cls`` N x P x P uint8;
  ``hv`` N x 2 x P x P float32; ``weight`` and ``cls_weight`` N x P x P float32 (trust in
  the outline / in the class, :class:`~wsi_stnuc.training.targets.Targets`) — one patch per chunk;
* optional soft class targets, when the LabelSet has ``prob_<class>`` columns:
  ``class_probs`` M x K float32 (one row per instance of every patch, in patch order) and
  ``class_probs_offset`` N + 1 int64 (patch ``i``'s instance ``j`` is row
  ``offset[i] + j - 1``);
* provenance arrays of length N: ``source`` (int32 index into ``attrs["sources"]``), ``x0``,
  ``y0`` (float64, level-0 top-left), ``block`` (int32 spatial block id, -1 if none) and
  ``split`` (uint8, 0 train / 1 val);
* ``attrs``: ``format``, ``classes`` (``ClassTable.to_dict()``), ``mpp``, ``patch``,
  ``sources``, and how the split was made.

Training and validation patches come from disjoint spatial blocks, and a patch that would
reach into a block of the other split is dropped (a guard band), so no pixel is seen on both
sides — neighbouring patches of one tissue region are strongly correlated.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

from wsi_stnuc.classes import ClassTable
from wsi_stnuc.errors import InputError
from wsi_stnuc.io_utils import atomic_path
from wsi_stnuc.training.augment import AugmentConfig, augment
from wsi_stnuc.training.targets import Targets

log = logging.getLogger(__name__)

FORMAT = "wsi-stnuc-patches/1"
SPLITS = {"train": 0, "val": 1}
TARGET_ARRAYS = ("inst", "cls", "hv", "weight", "cls_weight")


# ---------------------------------------------------------------------------------------------
# planning: tiles and spatial-block split
# ---------------------------------------------------------------------------------------------


def plan_tiles(
    bounds: tuple[float, float, float, float],
    footprint: tuple[float, float],
    step: tuple[float, float],
) -> np.ndarray:
    """Level-0 top-left corners ``M x 2`` of a grid of tiles inside ``bounds`` (at least one)."""
    out = []
    for lo, hi, size, st in zip(bounds[:2], bounds[2:], footprint, step, strict=True):
        n = max(1, int(np.floor((hi - lo - size) / st)) + 1)
        # Centre the grid in the labelled extent so both margins are equal.
        margin = (hi - lo - (n - 1) * st - size) / 2.0
        out.append(lo + margin + st * np.arange(n))
    xs, ys = np.meshgrid(out[0], out[1])
    return np.column_stack([xs.ravel(), ys.ravel()])


def split_blocks(
    origins: np.ndarray,
    footprint: tuple[float, float],
    block_size: float,
    val_fraction: float,
    seed: int,
    guard: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Assign tiles to train/val by spatial blocks; returns ``(block_id, split, keep)``.

    A tile belongs to the block holding its centre; whole blocks nearest a randomly chosen
    (seeded) corner of the block grid go to validation until ``val_fraction`` of the tiles is
    best matched. Guard band: a training tile that
    overlaps a validation tile, or comes within ``guard`` (level-0 px) of one, is dropped
    (``keep`` False), so no pixel -- and, with ``guard`` above a nucleus diameter, no nucleus --
    is seen on both sides.
    """
    fw, fh = footprint
    centres = origins + (fw / 2.0, fh / 2.0)
    cell = np.floor(centres / block_size).astype(np.int64)
    _, block = np.unique(cell, axis=0, return_inverse=True)
    block = block.ravel().astype(np.int32)
    n_blocks = int(block.max()) + 1 if len(block) else 0
    split = np.zeros(len(origins), np.uint8)
    keep = np.ones(len(origins), bool)
    if n_blocks < 2 or val_fraction <= 0:
        return block, split, keep
    # Validation blocks: a compact region grown from a random corner of the block grid, so the
    # train/val border -- where the guard band drops tiles -- stays short.
    rng = np.random.default_rng(seed)
    counts = np.bincount(block, minlength=n_blocks)
    block_cell = np.zeros((n_blocks, 2), np.int64)
    block_cell[block] = cell
    corner = np.where(rng.integers(2, size=2) == 1, block_cell.max(0), block_cell.min(0))
    order = np.lexsort((rng.random(n_blocks), np.abs(block_cell - corner).sum(1)))
    is_val = np.zeros(n_blocks, bool)
    target, n_val = val_fraction * len(origins), 0
    for b in order[: n_blocks - 1]:  # always keep a training block
        if n_val and abs(n_val + counts[b] - target) > abs(n_val - target):
            break
        is_val[b] = True
        n_val += counts[b]
    split = is_val[block].astype(np.uint8)
    x, y = origins[:, 0], origins[:, 1]
    val = np.nonzero(split == 1)[0]
    grown = shapely.box(x[val] - guard, y[val] - guard, x[val] + fw + guard, y[val] + fh + guard)
    train = np.nonzero(split == 0)[0]
    boxes = shapely.box(x[train], y[train], x[train] + fw, y[train] + fh)
    pairs = shapely.STRtree(grown).query(boxes, predicate="intersects")
    # Touching along an edge is not sharing pixels: require a positive overlap area.
    overlap = shapely.area(shapely.intersection(boxes[pairs[0]], grown[pairs[1]])) > 0
    keep[train[np.unique(pairs[0][overlap])]] = False
    return block, split, keep


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


class _PatchWriter:
    """Creates the arrays for ``n`` patches of size ``patch`` and writes them by index."""

    def __init__(self, root, n: int, patch: int):
        p = int(patch)
        specs = {
            "images": ((n, p, p, 3), "uint8", (1, p, p, 3)),
            "inst": ((n, p, p), "int32", (1, p, p)),
            "cls": ((n, p, p), "uint8", (1, p, p)),
            "hv": ((n, 2, p, p), "float32", (1, 2, p, p)),
            "weight": ((n, p, p), "float32", (1, p, p)),
            "cls_weight": ((n, p, p), "float32", (1, p, p)),
        }
        self.arrays = {
            name: root.create_array(name, shape=shape, dtype=dtype, chunks=chunks)
            for name, (shape, dtype, chunks) in specs.items()
        }
        self.patch = p
        self.root = root
        self.class_probs: list[np.ndarray | None] = [None] * n

    def write(self, i: int, image: np.ndarray, targets: Targets) -> None:
        if image.shape != (self.patch, self.patch, 3) or targets.inst.shape != image.shape[:2]:
            raise ValueError(
                f"patch {i}: image {image.shape} / targets {targets.inst.shape} are not "
                f"{self.patch} x {self.patch}"
            )
        self.arrays["images"][i] = image.astype(np.uint8, copy=False)
        for name in TARGET_ARRAYS:
            self.arrays[name][i] = getattr(targets, name)
        self.class_probs[i] = targets.class_probs

    def finish(self) -> None:
        """Write the per-instance class probabilities, if every patch has them."""
        have = [p is not None for p in self.class_probs]
        if not any(have):
            return
        if not all(have):
            raise ValueError("class probabilities for some patches only")
        counts = [len(p) for p in self.class_probs]
        offset = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        table = np.concatenate(self.class_probs).astype(np.float32)
        for name, values in (("class_probs", table), ("class_probs_offset", offset)):
            self.root.create_array(name, shape=values.shape, dtype=values.dtype)[...] = values


def _write_provenance(root, source, x0, y0, block, split) -> None:
    for name, values, dtype in (
        ("source", source, "int32"), ("x0", x0, "float64"), ("y0", y0, "float64"),
        ("block", block, "int32"), ("split", split, "uint8"),
    ):  # fmt: skip
        values = np.asarray(values, dtype=dtype)
        arr = root.create_array(name, shape=values.shape, dtype=dtype)
        arr[:] = values


def _prepare_out(out_zarr: Path) -> None:
    """Refuse to overwrite anything that is not an earlier patch dataset."""
    if not out_zarr.exists():
        return
    if out_zarr.is_dir() and _read_format(out_zarr) == FORMAT:
        shutil.rmtree(out_zarr)
        return
    raise InputError(out_zarr, "exists and is not a wsi-stnuc patch dataset; not overwriting")


def _read_format(path: Path) -> str | None:
    import zarr

    try:
        return zarr.open_group(str(path), mode="r").attrs.get("format")
    except Exception:  # not a zarr group at all
        return None


def write_patch_dataset(
    out_zarr: str | Path,
    records: Sequence[dict],
    classes: ClassTable,
    mpp: float,
) -> Path:
    """Write patches from elsewhere (e.g. manual CoNSeP labels) as a patch dataset.

    Each record holds ``image`` (P x P x 3 uint8), ``targets`` (:class:`Targets`) and
    optionally ``source`` (str), ``x0``/``y0`` (level-0 px), ``block`` (int) and ``split``
    (``"train"``/``"val"``; default train). Split by source image to keep validation honest.
    """
    import zarr

    if not records:
        raise ValueError("write_patch_dataset: no records")
    out_zarr = Path(out_zarr)
    patch = int(records[0]["image"].shape[0])
    sources = sorted({str(r.get("source", "")) for r in records})
    src_index = {s: i for i, s in enumerate(sources)}
    try:
        split = [SPLITS[r.get("split", "train")] for r in records]
    except KeyError as exc:
        raise ValueError(f"record split must be 'train' or 'val', got {exc}") from None
    _prepare_out(out_zarr)
    with atomic_path(out_zarr) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        writer = _PatchWriter(root, len(records), patch)
        for i, r in enumerate(records):
            writer.write(i, r["image"], r["targets"])
        writer.finish()
        _write_provenance(
            root,
            [src_index[str(r.get("source", ""))] for r in records],
            [r.get("x0", 0.0) for r in records],
            [r.get("y0", 0.0) for r in records],
            [r.get("block", -1) for r in records],
            split,
        )
        root.attrs.update(_attrs(classes, mpp, patch, sources, split))
    return out_zarr


def _attrs(classes: ClassTable, mpp: float, patch: int, sources, split, **extra) -> dict:
    split = np.asarray(split)
    return {
        "format": FORMAT,
        "classes": classes.to_dict(),
        "mpp": float(mpp),
        "patch": int(patch),
        "sources": [str(s) for s in sources],
        "n_train": int((split == 0).sum()),
        "n_val": int((split == 1).sum()),
        **extra,
    }


def _load_labels(labels):
    """A GeoDataFrame as given, or read from a LabelSet GeoParquet file."""
    if not isinstance(labels, str | Path):
        return labels
    from wsi_stnuc.st.labels import read_labelset

    gdf, _ = read_labelset(labels)
    return gdf


@dataclass
class Section:
    """One tissue section: its H&E slide and LabelSet (a GeoDataFrame or a GeoParquet path).

    ``name`` identifies it in the dataset (default: the slide's file stem); ``slide_mpp``
    overrides the slide's own µm/px; ``val`` sends the whole section to validation."""

    slide: str | Path
    labels: object
    name: str | None = None
    slide_mpp: float | None = None
    val: bool = False


@dataclass
class _Plan:
    """Where one section's patches go: level-0 origins, spatial blocks and split."""

    section: Section
    labels: object
    name: str
    origins: np.ndarray
    block: np.ndarray
    split: np.ndarray
    sx: float
    sy: float
    block_um: float


def _plan_section(
    section: Section, slide, *, mpp: float, patch: int, stride: int, tissue, block_um: float,
    guard_um: float, val_fraction: float, seed: int,
) -> _Plan:  # fmt: skip
    """Tiles with labelled nuclei over one section, split by spatial blocks (or all to val)."""
    labels = _load_labels(section.labels)
    name = section.name or Path(section.slide).stem
    if len(labels) == 0:
        raise InputError(section.slide, f"section {name}: the LabelSet is empty")
    mpp_x, mpp_y = slide.mpp
    sx, sy = mpp / mpp_x, mpp / mpp_y
    foot = (patch * sx, patch * sy)
    bounds = tuple(float(v) for v in labels.total_bounds)
    origins = plan_tiles(bounds, foot, (stride * sx, stride * sy))
    boxes = shapely.box(origins[:, 0], origins[:, 1], origins[:, 0] + foot[0],
                        origins[:, 1] + foot[1])  # fmt: skip
    has_labels = np.zeros(len(origins), bool)
    has_labels[np.unique(labels.sindex.query(boxes, predicate="intersects")[0])] = True
    if tissue is not None:
        has_labels &= shapely.intersects(boxes, tissue)
    origins = origins[has_labels]
    if len(origins) == 0:
        raise InputError(section.slide, "no tile with labelled nuclei (and tissue)")
    block_size = block_um / mpp_x
    while True:
        block, split, keep = split_blocks(
            origins, foot, block_size, 0.0 if section.val else val_fraction, seed,
            guard=guard_um / mpp_x,
        )  # fmt: skip
        if section.val or block.max() >= 1 or block_size <= min(foot):
            break
        block_size /= 2.0  # a small labelled region: smaller blocks, so val is not empty
    if section.val:
        split = np.ones(len(origins), np.uint8)
    origins, block, split = origins[keep], block[keep], split[keep]
    log.info("%d patches (%d val) from %s", len(origins), int(split.sum()), name)
    return _Plan(section, labels, name, origins, block, split, sx, sy, block_size * mpp_x)


def build_patch_dataset(
    slide_path: str | Path,
    labels,
    out_zarr: str | Path,
    *,
    slide_mpp: float | None = None,
    **options,
) -> Path:
    """Cut training patches at ``mpp`` µm/px from one slide where its LabelSet has nuclei.

    One section of :func:`build_section_dataset` (see there for ``options``); ``slide_mpp``
    overrides the slide's own µm/px.
    """
    section = Section(slide_path, labels, name=str(slide_path), slide_mpp=slide_mpp)
    return build_section_dataset([section], out_zarr, **options)


def build_section_dataset(
    sections: Sequence[Section],
    out_zarr: str | Path,
    *,
    classes: ClassTable,
    mpp: float,
    patch: int = 256,
    stride: int | None = None,
    tissue=None,
    block_um: float = 256.0,
    guard_um: float = 12.0,
    val_fraction: float = 0.2,
    seed: int = 0,
    snap_um: float | None = None,
    ignore_unlabelled: bool = False,
    progress: bool = False,
) -> Path:
    """One patch dataset from many sections (slide + LabelSet each), at ``mpp`` µm/px.

    Per section, tiles of ``patch`` model pixels every ``stride`` (default ``patch``) are laid
    over the labels' bounding box (pixels outside it get weight 0: unlabelled there is not
    background); only tiles that contain labelled nuclei (and touch ``tissue``, a level-0
    shapely geometry, when given) are kept. Train/val split: whole sections marked ``val``,
    and inside the others :func:`split_blocks` on ``block_um`` blocks (halved until there are
    at least two blocks) with a ``guard_um`` band (above a nucleus diameter). The ``source``
    array records each patch's section (``attrs["sources"]`` its name, ``attrs["sections"]``
    slide, LabelSet and counts). ``snap_um`` / ``ignore_unlabelled``: the label repairs of
    :mod:`wsi_stnuc.training.label_refine`. Cells dropped from a LabelSet become background
    unless ``ignore_unlabelled`` finds them in the H&E.
    """
    import zarr
    from tqdm import tqdm

    from wsi_stnuc.progress import bar_disable
    from wsi_stnuc.slide.registry import open_slide
    from wsi_stnuc.training.label_refine import refine_tile_targets

    if not sections:
        raise ValueError("build_section_dataset: no sections")
    out_zarr = Path(out_zarr)
    stride = int(stride or patch)
    plans = []
    for k, section in enumerate(sections):
        with open_slide(section.slide, mpp=section.slide_mpp) as slide:
            plans.append(_plan_section(
                section, slide, mpp=mpp, patch=patch, stride=stride, tissue=tissue,
                block_um=block_um, guard_um=guard_um, val_fraction=val_fraction, seed=seed + k,
            ))  # fmt: skip
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        raise InputError(None, f"section names must be unique, got {names}")
    n = sum(len(p.origins) for p in plans)
    totals = {"snapped": 0, "ignored_px": 0}
    _prepare_out(out_zarr)
    with atomic_path(out_zarr) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        writer = _PatchWriter(root, n, patch)
        i = 0
        bar = tqdm(total=n, desc="patches", unit="patch", disable=bar_disable(progress))
        for plan in plans:
            # Weight 0 outside the labelled extent: nuclei there are unlabelled, not background.
            label_box = tuple(float(v) for v in plan.labels.total_bounds)
            with open_slide(plan.section.slide, mpp=plan.section.slide_mpp) as slide:
                for x0, y0 in plan.origins:
                    image = slide.read_region(x0, y0, patch, patch, mpp)
                    t, stats = refine_tile_targets(
                        plan.labels, image, x0, y0, plan.sx, plan.sy, classes, mpp,
                        snap_um=snap_um, ignore_unlabelled=ignore_unlabelled,
                    )  # fmt: skip
                    for key in totals:
                        totals[key] += stats[key]
                    t.weight *= _inside_mask(label_box, x0, y0, plan.sx, plan.sy, patch)
                    writer.write(i, image, t)
                    i += 1
                    bar.update()
        bar.close()
        writer.finish()
        source = np.concatenate([np.full(len(p.origins), k) for k, p in enumerate(plans)])
        split = np.concatenate([p.split for p in plans])
        _write_provenance(
            root, source, np.concatenate([p.origins[:, 0] for p in plans]),
            np.concatenate([p.origins[:, 1] for p in plans]),
            np.concatenate([p.block for p in plans]), split,
        )  # fmt: skip
        section_info = [
            {"name": p.name, "slide": str(p.section.slide), "val": bool(p.section.val),
             "labels": str(p.section.labels) if isinstance(p.section.labels, str | Path) else None,
             "n_patches": len(p.origins), "n_val": int(p.split.sum()), "block_um": p.block_um}
            for p in plans
        ]  # fmt: skip
        extra = {"block_um": plans[0].block_um, "guard_um": guard_um, "stride": stride,
                 "val_fraction": val_fraction, "seed": seed, "sections": section_info,
                 "snap_um": snap_um, "ignore_unlabelled": bool(ignore_unlabelled),
                 "label_repairs": totals}  # fmt: skip
        root.attrs.update(_attrs(classes, mpp, patch, names, split, **extra))
    return out_zarr


def _inside_mask(box, x0: float, y0: float, sx: float, sy: float, patch: int) -> np.ndarray:
    """1 for model pixels whose centre lies inside the level-0 ``box``, else 0."""
    cx = x0 + (np.arange(patch) + 0.5) * sx
    cy = y0 + (np.arange(patch) + 0.5) * sy
    inx = (cx >= box[0]) & (cx <= box[2])
    iny = (cy >= box[1]) & (cy <= box[3])
    return (iny[:, None] & inx[None, :]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


def open_patch_dataset(path: str | Path):
    """The zarr group of a patch dataset; InputError if it is missing or foreign."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise InputError(path, "patch dataset not found")
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise InputError(path, f"not a wsi-stnuc patch dataset (no zarr group: {exc})") from exc
    if root.attrs.get("format") != FORMAT:
        raise InputError(path, "not a wsi-stnuc patch dataset (build one with `wsi-stnuc dataset`)")
    return root


class PatchDataset:
    """Torch dataset over one split of a patch dataset.

    Items are dicts of tensors: ``image`` float32 3 x P x P in [0, 1], ``cls`` int64, ``hv``
    float32 2 x P x P, ``weight`` and ``cls_weight`` float32, ``inst`` int32; with
    ``soft_classes`` also ``cls_soft`` float32 K x P x P (each nucleus pixel: its instance's
    class probabilities; 0 on background). With ``augment`` each item is
    transformed by :func:`wsi_stnuc.training.augment.augment` with a generator seeded from
    ``(seed, epoch, index)`` — reproducible across runs and DataLoader workers; call
    :meth:`set_epoch` each epoch. Splits up to ``max_memory_mb`` are read into memory once.
    """

    def __init__(
        self,
        zarr_path: str | Path,
        split: str = "train",
        augment: bool = True,
        *,
        config: AugmentConfig | None = None,
        seed: int = 0,
        max_memory_mb: float = 2048.0,
        soft_classes: bool = False,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        self.path = Path(zarr_path)
        root = open_patch_dataset(self.path)
        self.attrs = dict(root.attrs)
        self.classes = ClassTable.from_dict(self.attrs["classes"])
        self.mpp = float(self.attrs["mpp"])
        self.indices = np.nonzero(root["split"][:] == SPLITS[split])[0]
        self.augment = augment
        self.config = config or AugmentConfig()
        self.seed = int(seed)
        self.epoch = 0
        p = int(self.attrs["patch"])
        # Datasets written before cls_weight existed: the class is as trusted as the outline.
        self._arrays = ("images", *(n for n in TARGET_ARRAYS if n in root))
        nbytes = len(self.indices) * p * p * (3 + 4 + 1 + 8 + 4 + 4)
        self._cache = None
        if nbytes <= max_memory_mb * 2**20 and len(self.indices):
            sel = self.indices
            self._cache = {
                name: root[name].get_orthogonal_selection((sel,)) for name in self._arrays
            }
        self._root = None if self._cache is not None else root
        self.soft_classes = bool(soft_classes)
        self._probs = self._offsets = None
        if "class_probs" in root:
            self._probs = root["class_probs"][...]
            self._offsets = root["class_probs_offset"][...]
        elif self.soft_classes:
            raise InputError(
                self.path,
                "no class probabilities in this dataset: build it from a LabelSet with "
                "prob_<class> columns (typing with probabilities) to train on soft classes",
            )

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def sample(self, i: int) -> dict:
        """The i-th patch of the split as numpy arrays (no augmentation)."""
        if self._cache is not None:
            arrays = {name: a[i] for name, a in self._cache.items()}
        else:
            j = int(self.indices[i])
            arrays = {name: self._root[name][j] for name in self._arrays}
        arrays["image"] = arrays.pop("images")
        if "cls_weight" not in arrays:
            arrays["cls_weight"] = np.ones_like(arrays["weight"])
        if self._probs is not None:
            j = int(self.indices[i])
            arrays["class_probs"] = self._probs[self._offsets[j] : self._offsets[j + 1]]
        return arrays

    def __getitem__(self, i: int) -> dict:
        import torch

        s = self.sample(i)
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, int(self.indices[i])))
            s = augment(s, rng, self.config)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(s["image"].transpose(2, 0, 1)))
            .float()
            .div_(255.0),
            "cls": torch.from_numpy(s["cls"].astype(np.int64)),
            "hv": torch.from_numpy(np.ascontiguousarray(s["hv"], dtype=np.float32)),
            "weight": torch.from_numpy(np.ascontiguousarray(s["weight"], dtype=np.float32)),
            "cls_weight": torch.from_numpy(np.ascontiguousarray(s["cls_weight"], dtype=np.float32)),
            "inst": torch.from_numpy(np.ascontiguousarray(s["inst"], dtype=np.int32)),
        }
        if self.soft_classes:
            item["cls_soft"] = torch.from_numpy(soft_class_map(s["inst"], s["class_probs"]))
        return item


def soft_class_map(inst: np.ndarray, class_probs: np.ndarray) -> np.ndarray:
    """K x H x W float32: each pixel of instance ``i`` gets row ``i - 1`` of ``class_probs``
    (N x K); background 0. Built after augmentation, which keeps instance ids."""
    lut = np.vstack([np.zeros((1, class_probs.shape[1]), np.float32), class_probs])
    return np.ascontiguousarray(np.moveaxis(lut[inst], -1, 0), dtype=np.float32)

"""How well does the image separate the fine expression types? A nucleus-level crop classifier,
cross-validated by spatial blocks, gives the confusion matrix that taxonomy learning merges.

Features: a small CNN on nucleus-centred RGB crops (default 32 px at 0.5 µm/px, i.e. the
nucleus and a ring of context). A CNN learns chromatin texture and the nucleus/context contrast
that hand-crafted morphology (area, eccentricity, mean stain) only summarises, it is what the
segmentation network will eventually see, and at this size it trains on two CPU cores in about
a minute. Cross-entropy is class-weighted (inverse frequency) so that the confusion reflects
what the image can tell apart, not the class priors.

Validation: cells are grouped into square spatial blocks (``block_size`` level-0 px, per slide)
and folds are formed from whole blocks (``GroupKFold``), so neighbouring cells, which share
staining and tissue context, are never on both sides of a split; per-cell CV on a slide would
leak that context and overstate separability.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from wsi_stnuc.errors import InputError
from wsi_stnuc.taxonomy.learn import f1_scores

log = logging.getLogger(__name__)


@dataclass
class CVResult:
    """Cross-validated predictions of the crop classifier.

    ``confusion``: counts, rows = true type, columns = predicted type (``types`` order);
    ``fold``: test fold of every cell; ``predicted``: predicted type per cell;
    ``proba``: ``N x T`` held-out class probabilities.
    """

    types: list[str]
    confusion: pd.DataFrame
    f1: pd.Series
    fold: np.ndarray
    predicted: np.ndarray
    proba: np.ndarray

    @property
    def confusion_normalised(self) -> pd.DataFrame:
        """Row-normalised confusion (each true type sums to 1)."""
        sums = self.confusion.sum(axis=1).replace(0, np.nan)
        return self.confusion.div(sums, axis=0).fillna(0.0)


def spatial_block_ids(
    centroids_level0: np.ndarray, block_size: float, *, slide_index: np.ndarray | None = None
) -> np.ndarray:
    """An integer block id per cell: square blocks of ``block_size`` level-0 px, per slide."""
    pts = np.asarray(centroids_level0, dtype=np.float64)
    if block_size <= 0:
        raise InputError(None, f"block_size must be positive, got {block_size}")
    cells = np.floor(pts / block_size).astype(np.int64)
    slide = np.zeros(len(pts), np.int64) if slide_index is None else np.asarray(slide_index)
    keys = np.column_stack([slide, cells])
    return np.unique(keys, axis=0, return_inverse=True)[1].ravel()


def spatial_folds(block_ids: np.ndarray, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train_index, test_index)`` pairs from whole blocks (sklearn ``GroupKFold``)."""
    from sklearn.model_selection import GroupKFold

    n_blocks = len(np.unique(block_ids))
    if n_blocks < n_splits:
        raise InputError(
            None,
            f"only {n_blocks} spatial blocks for {n_splits} folds: use smaller blocks or fewer folds",
        )
    dummy = np.zeros(len(block_ids))
    return list(GroupKFold(n_splits=n_splits).split(dummy, groups=block_ids))


class CropCNN(nn.Module):
    """Four 3x3 conv blocks with pooling, global average pooling, a linear head (~70 k weights).

    GroupNorm, not BatchNorm: a minute of training is a few hundred steps, too few for batch
    statistics to settle, and eval-mode BatchNorm then collapses predictions to one class.
    """

    def __init__(self, n_classes: int, width: int = 16):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for k in range(4):
            layers += [
                nn.Conv2d(chans[k], chans[k + 1], 3, padding=1, bias=False),
                nn.GroupNorm(4, chans[k + 1]),
                nn.ReLU(inplace=True),
            ]
            if k < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(chans[-1], n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run torch ops with ``n`` intra-op threads (None: leave as is), restoring afterwards.

    This CNN's convolutions on small batches gain little from threads, and on a shared machine
    extra threads thrash: measured 20x more CPU time with 2 threads than with 1 under load.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _to_tensor(crops: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Dihedral flips/rotations (nuclei have no orientation) and mild brightness/contrast."""
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    if bool(torch.randint(0, 2, (1,), generator=gen)):
        x = torch.flip(x, dims=(3,))
    n = x.shape[0]
    gain = 1.0 + 0.1 * (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1)
    bias = 0.05 * (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1)
    return (x * gain + bias).clamp_(0.0, 1.0)


def _fixed_cudnn(fn):
    """Run ``fn`` with cuDNN's deterministic algorithms (and no autotuning): the default ones may
    sum in a different order on every run, and on an H200 two crop CVs with one seed learned
    different taxonomies (ARI 0.73 vs 0.27 against the truth). They cost little for networks
    this small."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        cudnn = torch.backends.cudnn
        old = cudnn.deterministic, cudnn.benchmark
        cudnn.deterministic, cudnn.benchmark = True, False
        try:
            return fn(*args, **kwargs)
        finally:
            cudnn.deterministic, cudnn.benchmark = old

    return wrapper


@_fixed_cudnn
def train_crop_cnn(
    crops: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    epochs: int = 12,
    batch_size: int | None = None,
    lr: float = 3e-3,
    max_per_class: int | None = 600,
    min_steps: int = 120,
    seed: int = 0,
    device: str = "cpu",
) -> CropCNN:
    """Train a :class:`CropCNN` on ``N x S x S x 3`` uint8 crops with integer ``labels``.

    Each epoch draws at most ``max_per_class`` cells of every class (fresh draw per epoch),
    which bounds CPU time on big slides and, with inverse-frequency loss weights, balances
    the classes. Small sets get smaller batches (``batch_size`` None: an eighth of an epoch,
    16-128) and extra epochs up to ``min_steps`` optimiser steps, so they still converge.
    """
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = CropCNN(n_classes).to(device)
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    drawn = counts if max_per_class is None else np.minimum(counts, max_per_class)
    weights = np.divide(drawn.sum(), n_classes * drawn, out=np.zeros_like(drawn), where=drawn > 0)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=device))
    by_class = [np.flatnonzero(labels == c) for c in range(n_classes)]
    per_epoch = int(drawn.sum())
    if batch_size is None:
        batch_size = int(np.clip(per_epoch // 8, 16, 128))
    steps_per_epoch = max(1, int(np.ceil(per_epoch / batch_size)))
    epochs = max(epochs, int(np.ceil(min_steps / steps_per_epoch)))
    steps = epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    y_all = torch.from_numpy(labels.astype(np.int64))
    model.train()
    for epoch in range(epochs):
        idx = np.concatenate(
            [
                rng.choice(ix, size=int(d), replace=False)
                for ix, d in zip(by_class, drawn, strict=True)
                if d > 0
            ]
        )
        rng.shuffle(idx)
        total = 0.0
        for start in range(0, len(idx), batch_size):
            batch = idx[start : start + batch_size]
            x = _augment(_to_tensor(crops[batch]), gen).to(device)
            loss = loss_fn(model(x), y_all[batch].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(batch)
        log.debug("crop cnn epoch %d/%d loss %.4f", epoch + 1, epochs, total / max(len(idx), 1))
    return model.eval()


@torch.no_grad()
def predict_crops(
    model: nn.Module, crops: np.ndarray, *, batch_size: int = 512, device: str = "cpu"
) -> np.ndarray:
    """Class probabilities ``N x K``, averaged over the four rotations (test-time augmentation)."""
    model.eval()
    out = []
    for start in range(0, len(crops), batch_size):
        x = _to_tensor(crops[start : start + batch_size]).to(device)
        p = sum(torch.softmax(model(torch.rot90(x, k, dims=(2, 3))), dim=1) for k in range(4))
        out.append((p / 4).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def cross_validate_crops(
    crops: np.ndarray,
    cell_types: np.ndarray,
    block_ids: np.ndarray,
    *,
    n_splits: int = 5,
    epochs: int = 12,
    max_per_class: int | None = 600,
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = 1,
    progress: bool = False,
) -> CVResult:
    """Spatial-block cross-validation of the crop CNN; every cell is predicted exactly once,
    by a model that saw none of its block."""
    types, y = _encode_types(crops, cell_types, block_ids)
    folds = spatial_folds(block_ids, n_splits)
    proba = np.zeros((len(y), len(types)), np.float32)
    fold_of = np.full(len(y), -1, np.int64)
    iterator = enumerate(folds)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(folds), desc="spatial CV", unit="fold", disable=None)  # TTY only
    with torch_threads(threads):
        for f, (train, test) in iterator:
            model = train_crop_cnn(
                crops[train],
                y[train],
                len(types),
                epochs=epochs,
                max_per_class=max_per_class,
                seed=seed + f,
                device=device,
            )
            proba[test] = predict_crops(model, crops[test], device=device)
            fold_of[test] = f
    return _cv_result(types, y, proba, fold_of)


def _encode_types(samples, cell_types, block_ids) -> tuple[np.ndarray, np.ndarray]:
    """Sorted type names and integer labels; checks the inputs line up."""
    cell_types = np.asarray(cell_types).astype(str)
    if not (len(samples) == len(cell_types) == len(block_ids)):
        raise InputError(
            None,
            f"samples ({len(samples)}), types ({len(cell_types)}) and blocks ({len(block_ids)}) "
            "differ in length",
        )
    types, y = np.unique(cell_types, return_inverse=True)
    if len(types) < 2:
        raise InputError(None, f"need at least two fine types to compare, got {list(types)}")
    return types, y


def _cv_result(
    types: np.ndarray, y: np.ndarray, proba: np.ndarray, fold_of: np.ndarray
) -> CVResult:
    pred = proba.argmax(axis=1)
    counts = np.zeros((len(types), len(types)), np.int64)
    np.add.at(counts, (y, pred), 1)
    names = [str(t) for t in types]
    confusion = pd.DataFrame(counts, index=names, columns=names)
    return CVResult(
        types=names,
        confusion=confusion,
        f1=pd.Series(f1_scores(counts), index=names, name="f1"),
        fold=fold_of,
        predicted=types[pred],
        proba=proba,
    )


@torch.no_grad()
def encoder_features(
    checkpoint: str | Path, crops: np.ndarray, *, batch_size: int = 256, device: str = "cpu"
) -> np.ndarray:
    """``N x F`` features of crops from a trained segmentation checkpoint's encoder.

    The global average of each of the three deepest encoder levels, concatenated: the deep
    levels carry nucleus texture and context, the pooled shallower one the nucleus' own stain.
    Crops must be at the checkpoint's mpp (``meta["mpp"]``), side a multiple of its stride.
    """
    from wsi_stnuc.model.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint, device=device)
    if crops.shape[1] % model.stride or crops.shape[2] % model.stride:
        raise InputError(
            checkpoint, f"crop side {crops.shape[1]} is not a multiple of the stride {model.stride}"
        )
    out = []
    for start in range(0, len(crops), batch_size):
        feats = model.encoder(_to_tensor(crops[start : start + batch_size]).to(device))
        out.append(torch.cat([f.mean(dim=(2, 3)) for f in feats[-3:]], dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def cross_validate_features(
    features: np.ndarray,
    cell_types: np.ndarray,
    block_ids: np.ndarray,
    *,
    n_splits: int = 5,
    seed: int = 0,
) -> CVResult:
    """Spatial-block CV of a class-balanced logistic regression on fixed features
    (e.g. :func:`encoder_features`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    types, y = _encode_types(features, cell_types, block_ids)
    proba = np.zeros((len(y), len(types)), np.float32)
    fold_of = np.full(len(y), -1, np.int64)
    for f, (train, test) in enumerate(spatial_folds(block_ids, n_splits)):
        clf = make_pipeline(
            StandardScaler(),
            LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed),
        )
        clf.fit(features[train], y[train])
        # classes absent from a training fold get no column: place the others by label
        proba[np.ix_(test, clf.classes_)] = clf.predict_proba(features[test])
        fold_of[test] = f
    return _cv_result(types, y, proba, fold_of)


def labelset_centroids(labels) -> np.ndarray:
    """``N x 2`` level-0 centroids of a LabelSet's polygons (shapely 2, vectorised)."""
    import shapely

    c = shapely.centroid(np.asarray(labels.geometry.values))
    return np.column_stack([shapely.get_x(c), shapely.get_y(c)])


def image_confusion(
    pairs: list[tuple[object, object]],
    *,
    mpp: float = 0.5,
    size: int = 32,
    block_um: float = 250.0,
    min_confidence: float = 0.0,
    n_splits: int = 5,
    epochs: int = 12,
    max_per_class: int | None = 600,
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = 1,
    checkpoint: str | Path | None = None,
    progress: bool = False,
) -> CVResult:
    """Crops of every labelled cell of every ``(labelset GeoDataFrame, slide)`` pair, then
    spatial-block CV by fine ``cell_type``. ``block_um``: block side in µm. Cells without a
    type, with zero weight or with typing ``confidence`` below ``min_confidence`` are left out
    (their type says little about what the image shows). With ``checkpoint`` (a trained
    segmentation model) the classifier is a logistic regression on its encoder features
    instead of the crop CNN; crops are then read at the checkpoint's mpp."""
    from wsi_stnuc.formats import LabelCols
    from wsi_stnuc.taxonomy.crops import extract_crops, open_reader

    if checkpoint is not None:
        from wsi_stnuc.model.checkpoint import read_checkpoint

        mpp = float(read_checkpoint(checkpoint)["mpp"])
        log.info("encoder features of %s: crops read at its %.3f µm/px", checkpoint, mpp)
    all_crops, all_types, all_blocks = [], [], []
    offset = 0
    for s, (labels, slide) in enumerate(pairs):
        if LabelCols.CELL_TYPE not in labels.columns:
            raise InputError(
                getattr(slide, "path", slide), f"labels lack a '{LabelCols.CELL_TYPE}' column"
            )
        keep = labels[LabelCols.CELL_TYPE].notna().to_numpy().copy()  # pandas may hand a view
        if LabelCols.WEIGHT in labels.columns:
            keep &= labels[LabelCols.WEIGHT].fillna(0).to_numpy() > 0
        if min_confidence > 0 and LabelCols.CONFIDENCE in labels.columns:
            keep &= labels[LabelCols.CONFIDENCE].fillna(0).to_numpy() >= min_confidence
        sub = labels[keep]
        centroids = labelset_centroids(sub)
        reader, owned = open_reader(slide)
        try:
            block_px = block_um / float(np.mean(reader.mpp))
            all_crops.append(
                extract_crops(reader, centroids, mpp=mpp, size=size, progress=progress)
            )
        finally:
            if owned and hasattr(reader, "close"):
                reader.close()
        all_types.append(sub[LabelCols.CELL_TYPE].astype(str).to_numpy())
        all_blocks.append(
            spatial_block_ids(centroids, block_px, slide_index=np.full(len(sub), s)) + offset
        )
        offset = int(all_blocks[-1].max()) + 1 if len(sub) else offset
    crops, types, blocks = (np.concatenate(v) for v in (all_crops, all_types, all_blocks))
    if checkpoint is not None:
        with torch_threads(threads):
            features = encoder_features(checkpoint, crops, device=device)
        return cross_validate_features(features, types, blocks, n_splits=n_splits, seed=seed)
    return cross_validate_crops(
        crops,
        types,
        blocks,
        n_splits=n_splits,
        epochs=epochs,
        max_per_class=max_per_class,
        seed=seed,
        device=device,
        threads=threads,
        progress=progress,
    )

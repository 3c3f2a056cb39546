"""Train :class:`~wsi_stnuc.model.net.NucleiNet` on a patch dataset.

AdamW with a warm-up + cosine learning-rate schedule, AMP on CUDA, early stopping on the
validation panoptic quality, ``best.pt`` and ``last.pt`` checkpoints (``last.pt`` carries the
optimizer state, so :func:`train_model` can resume), ``log.csv`` with one row per epoch,
``run.json`` (steps, why training stopped, seed, threads, versions) and ``curves.png``.

Reproducibility: on CPU a run is deterministic for a given seed and thread count (shuffling
uses a generator seeded per epoch, augmentations are seeded per (epoch, patch)). The schedule
follows the step budget; ``max_minutes`` is only a safety cap, and a run it stops is marked
(``run.json`` ``time_capped``, a warning) because the clock is what no seed controls.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi_stnuc.errors import InputError
from wsi_stnuc.io_utils import atomic_path

log = logging.getLogger(__name__)

BEST = "best.pt"
LAST = "last.pt"
LOG = "log.csv"
RUN = "run.json"
CURVES = "curves.png"


@dataclass
class TrainConfig:
    """Training options (stored in every checkpoint).

    ``width`` and ``batch_size`` default by device: 8 and 4 on CPU (measured: the fastest to a
    useful 3-class model from 0.5 µm/px tiles in 2 minutes on 2 loaded cores; width 16 was no
    better in the same time), 32 and 16 on CUDA. The resolved values go into the checkpoint.
    ``amp``: ``"auto"`` (on for CUDA), True or False. ``steps_per_epoch`` caps an epoch
    (None: one pass over the training split). ``val_every``: validate every so many epochs
    (None: about every ``val_steps`` steps, and always after the last epoch); ``patience`` counts
    validations. ``threads``: torch CPU threads (None: torch's). ``max_steps``: stop after so
    many optimizer steps (the schedule then spans ``max_steps``, not ``epochs``); a step budget
    makes runs on different machines or under different loads comparable; ``max_minutes`` is a
    safety cap that stops a run early (and marks it so) but never changes its schedule. ``augment_preset``: ``"strong"`` (default) or ``"light"``
    colour jitter (:class:`~wsi_stnuc.training.augment.AugmentConfig`). ``soft_classes``: class
    targets are the typing's class probabilities (the dataset's ``class_probs``) instead of
    the hard classes; see :func:`~wsi_stnuc.model.losses.hovernet_loss`.
    """

    epochs: int = 30
    batch_size: int | None = None
    lr: float = 3e-3
    weight_decay: float = 1e-4
    width: int | None = None
    depth: int = 4
    encoder: str = "unet"
    pretrained_path: str | None = None
    device: str = "auto"
    amp: str | bool = "auto"
    patience: int = 8
    seed: int = 0
    num_workers: int = 0
    max_minutes: float | None = None
    log_every: int = 20
    steps_per_epoch: int | None = None
    val_every: int | None = None
    val_steps: int = 50
    warmup_fraction: float = 0.05
    augment: bool = True
    threads: int | None = None
    max_steps: int | None = None
    augment_preset: str = "strong"
    soft_classes: bool = False


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up to 1 over ``warmup`` of the run, then cosine decay to 0.01."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 0.01)
    t = (progress - warmup) / max(1.0 - warmup, 1e-9)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))


def _seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    import torch

    # One BLAS/torch thread per loader worker: the main process owns the cores.
    torch.set_num_threads(1)


def _pooled_pq(stats: list[dict]) -> dict:
    """PQ over all validation patches pooled (sums of TP/FP/FN/IoU), not a mean of ratios."""
    tp = sum(s["tp"] for s in stats)
    fp = sum(s["fp"] for s in stats)
    fn = sum(s["fn"] for s in stats)
    sum_iou = sum(s["sq"] * s["tp"] for s in stats if s["tp"])
    if tp + fp + fn == 0:
        return {"pq": float("nan"), "dq": float("nan"), "sq": float("nan")}
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = sum_iou / tp if tp else 0.0
    return {"pq": dq * sq, "dq": dq, "sq": sq}


def evaluate(model, dataset, device, batch_size: int = 8, amp: bool = False) -> dict:
    """Validation figures: mean loss, pooled PQ/DQ/SQ after post-processing, the pixel
    accuracy of the class head on nuclei of known class (``cls_acc``) and its per-class pixel
    F1 there (``f1_<class>``).

    Pixels of weight 0 (outside the labelled area) are blanked in truth and prediction.
    """
    import torch

    from wsi_stnuc.evaluation.metrics import panoptic_quality
    from wsi_stnuc.model.losses import hovernet_loss
    from wsi_stnuc.model.postprocess import heads_to_instances

    model.eval()
    losses, stats = [], []
    n_cls = len(dataset.classes.names)
    confusion = np.zeros((n_cls + 1, n_cls + 1), np.int64)  # true x predicted, known pixels
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        with torch.inference_mode():
            with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                out = model(batch["image"].to(device))
            terms = hovernet_loss(
                out, batch["cls"].to(device), batch["hv"].to(device), batch["weight"].to(device),
                cls_weight=batch["cls_weight"].to(device),
                cls_soft=batch["cls_soft"].to(device) if "cls_soft" in batch else None,
            )  # fmt: skip
            np_prob = out["np"].float().softmax(1)[:, 1].cpu().numpy()
            hv = out["hv"].float().cpu().numpy()
            tp = out["tp"].float().softmax(1).cpu().numpy()
        losses.append(float(terms["total"]) * len(items))
        for j, it in enumerate(items):
            valid = it["weight"].numpy() > 0
            pred, _ = heads_to_instances(np_prob[j], hv[j], tp[j])
            true = np.where(valid, it["inst"].numpy(), 0)
            stats.append(panoptic_quality(true, np.where(valid, pred, 0)))
            cls = it["cls"].numpy()
            known = valid & (cls > 0) & (cls != 255)
            pred_cls = tp[j][1:].argmax(0) + 1
            pair = cls[known].astype(np.int64) * (n_cls + 1) + pred_cls[known]
            confusion += np.bincount(pair, minlength=confusion.size).reshape(confusion.shape)
    result = _pooled_pq(stats)
    result["loss"] = sum(losses) / max(len(dataset), 1)
    total = confusion.sum()
    result["cls_acc"] = float(np.trace(confusion) / total) if total else float("nan")
    result.update(_class_f1(confusion, dataset.classes.names))
    return result


def _class_f1(confusion: np.ndarray, names) -> dict:
    """``f1_<class>``: pixel F1 of each class among nucleus pixels of known class (NaN for a
    class neither present nor predicted)."""
    tp = np.diag(confusion)[1:].astype(np.float64)
    denom = confusion[1:, :].sum(1) + confusion[:, 1:].sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    return {f"f1_{name}": float(v) for name, v in zip(names, f1, strict=True)}


def _write_log(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.6g")


def _better(metrics: dict, state: dict) -> bool:
    """Higher validation PQ wins; on a tie (e.g. PQ 0 early on) the lower validation loss."""
    pq, best = metrics.get("pq", float("nan")), state["best"]
    if not np.isfinite(pq):
        return False
    if not np.isfinite(best) or pq > best + 1e-9:
        return True
    return pq >= best - 1e-9 and metrics.get("loss", np.inf) < state.get("best_loss", np.inf)


def train_model(
    dataset_zarr: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Train on ``dataset_zarr``; write ``best.pt``, ``last.pt`` and ``log.csv`` into
    ``out_dir``; return the path of the best checkpoint (by validation PQ; the last one when
    the dataset has no validation split).

    ``resume``: a ``last.pt`` (or any checkpoint of this trainer) to continue from — weights,
    optimizer, schedule position, epoch, best score and log rows are restored.
    """
    import torch

    cfg = config or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    try:
        return _train(Path(dataset_zarr), out, cfg, resume, progress)
    finally:
        torch.set_num_threads(old_threads)


@dataclass
class _Run:
    """Everything one training run carries from step to step."""

    cfg: TrainConfig
    out: Path
    device: object
    use_amp: bool
    amp_dtype: object
    train_ds: object
    val_ds: object
    model: object
    opt: object
    scaler: object
    state: dict
    rows: list
    steps_per_epoch: int
    val_every: int
    total_steps: int
    time_budget: float | None
    last_epoch: int
    t_start: float = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def checkpoint(self, path: Path, metrics: dict) -> None:
        from wsi_stnuc.model.checkpoint import save_checkpoint

        extra = {"optimizer": self.opt.state_dict(), "state": dict(self.state), "log": self.rows}
        save_checkpoint(path, self.model, classes=self.train_ds.classes, mpp=self.train_ds.mpp,
                        train_config=self.cfg, metrics=metrics,
                        extra=extra if path.name == LAST else {})  # fmt: skip


def _resolve_config(cfg: TrainConfig, device) -> TrainConfig:
    """Fill in the device-dependent defaults (width, batch size) that go into the checkpoint."""
    cuda = device.type == "cuda"
    return dataclasses.replace(
        cfg,
        width=cfg.width or (32 if cuda else 8),
        batch_size=cfg.batch_size or (16 if cuda else 4),
    )


def _open_datasets(dataset_zarr: Path, cfg: TrainConfig):
    """(train, val) patch datasets; the train split augments, the val split does not."""
    from wsi_stnuc.training.augment import AugmentConfig
    from wsi_stnuc.training.dataset import PatchDataset

    train_ds = PatchDataset(dataset_zarr, "train", augment=cfg.augment, seed=cfg.seed,
                            config=AugmentConfig.preset(cfg.augment_preset),
                            soft_classes=cfg.soft_classes)  # fmt: skip
    val_ds = PatchDataset(dataset_zarr, "val", augment=False, soft_classes=cfg.soft_classes)
    if len(train_ds) == 0:
        raise InputError(dataset_zarr, "the dataset has no training patches")
    if len(val_ds) == 0:
        log.warning("%s has no validation patches: no early stopping", dataset_zarr)
    patch = int(train_ds.attrs["patch"])
    if cfg.encoder == "unet" and patch % 2**cfg.depth:
        raise InputError(dataset_zarr, f"patch size {patch} is not a multiple of 2**depth")
    return train_ds, val_ds


def _new_state() -> dict:
    return {"epoch": 0, "step": 0, "elapsed": 0.0, "best": float("nan"),
            "best_loss": float("inf"), "bad_epochs": 0, "stop": ""}  # fmt: skip


def _build_model(cfg: TrainConfig, n_classes: int, resume, device):
    """(model, optimizer, state, log rows): fresh, or restored from ``resume``."""
    import torch

    from wsi_stnuc.model.checkpoint import load_checkpoint
    from wsi_stnuc.model.net import NucleiNet

    model = NucleiNet(n_classes, width=cfg.width, depth=cfg.depth,
                      encoder=cfg.encoder, pretrained_path=cfg.pretrained_path)  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state, rows = _new_state(), []
    if resume is not None:
        model, meta = load_checkpoint(resume, device="cpu")
        extra = meta["extra"]
        if "optimizer" not in extra:
            raise InputError(resume, "checkpoint has no optimizer state (resume from last.pt)")
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        opt.load_state_dict(extra["optimizer"])
        state.update(extra["state"])
        rows = [r for r in extra.get("log", []) if r["epoch"] <= state["epoch"]]
        log.info("resuming from %s at epoch %d", resume, state["epoch"])
    model.to(device)
    for group in opt.state.values():  # optimizer tensors follow the model's device
        for k, v in group.items():
            if torch.is_tensor(v):
                group[k] = v.to(device)
    return model, opt, state, rows


def _prepare_run(dataset_zarr: Path, out: Path, cfg: TrainConfig, resume) -> _Run:
    import torch

    from wsi_stnuc.model.net import resolve_device

    _seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    cfg = _resolve_config(cfg, device)
    use_amp = device.type == "cuda" if cfg.amp == "auto" else bool(cfg.amp)
    use_amp = use_amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    train_ds, val_ds = _open_datasets(dataset_zarr, cfg)
    model, opt, state, rows = _build_model(cfg, train_ds.classes.n_classes, resume, device)
    steps_per_epoch = cfg.steps_per_epoch or math.ceil(len(train_ds) / cfg.batch_size)
    run = _Run(
        cfg=cfg, out=out, device=device, use_amp=use_amp, amp_dtype=amp_dtype,
        train_ds=train_ds, val_ds=val_ds, model=model, opt=opt,
        scaler=torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16),
        state=state, rows=rows, steps_per_epoch=steps_per_epoch,
        # Small datasets make short epochs: validating after each would cost more than training.
        val_every=cfg.val_every or max(1, round(cfg.val_steps / steps_per_epoch)),
        total_steps=max(1, cfg.max_steps or cfg.epochs * steps_per_epoch),
        time_budget=cfg.max_minutes * 60.0 if cfg.max_minutes else None,
        last_epoch=cfg.epochs if cfg.max_steps is None else 10**9,
    )  # fmt: skip
    run.t_start = time.perf_counter() - state["elapsed"]
    return run


def _train_epoch(run: _Run, epoch: int, progress: bool) -> tuple[dict, bool]:
    """One epoch of optimizer steps: (mean loss terms, whether the budget is spent; the state's
    ``stop`` then says which: ``"max_steps"`` or ``"time_cap"``)."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from wsi_stnuc.model.losses import hovernet_loss
    from wsi_stnuc.progress import bar_disable

    cfg, state = run.cfg, run.state
    run.model.train()
    run.train_ds.set_epoch(epoch)
    loader = DataLoader(
        run.train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=False,
        num_workers=cfg.num_workers, pin_memory=run.device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch),
        worker_init_fn=_worker_init if cfg.num_workers else None,
        persistent_workers=False,
    )  # fmt: skip
    sums: dict[str, float] = {}
    n_seen = 0
    lr = cfg.lr
    budget_spent = False
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=bar_disable(progress), leave=False)
    for i, batch in enumerate(bar):
        if i >= run.steps_per_epoch:
            break
        # The schedule follows steps only: the time cap may cut a run short, never reshape it.
        lr = cfg.lr * lr_factor(state["step"] / run.total_steps, cfg.warmup_fraction)
        for g in run.opt.param_groups:
            g["lr"] = lr
        batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.use_amp):
            heads = run.model(batch["image"])
        terms = hovernet_loss(heads, batch["cls"], batch["hv"], batch["weight"],
                              cls_weight=batch["cls_weight"],
                              cls_soft=batch.get("cls_soft"))  # fmt: skip
        run.opt.zero_grad(set_to_none=True)
        run.scaler.scale(terms["total"]).backward()
        run.scaler.step(run.opt)
        run.scaler.update()
        state["step"] += 1
        n = batch["image"].shape[0]
        n_seen += n
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
        if state["step"] % max(cfg.log_every, 1) == 0:
            bar.set_postfix(loss=f"{float(terms['total'].detach()):.3f}", lr=f"{lr:.2e}")
            log.debug("step %d loss %.4f", state["step"], float(terms["total"].detach()))
        if state["step"] >= run.total_steps:
            state["stop"], budget_spent = "max_steps" if cfg.max_steps else "epochs", True
            break
        if run.time_budget and run.elapsed() >= run.time_budget:
            state["stop"], budget_spent = "time_cap", True
            break
    row = {"epoch": epoch, "step": state["step"], "lr": lr}
    row.update({f"train_{k}": v / max(n_seen, 1) for k, v in sums.items()})
    return row, budget_spent


def _finish_epoch(run: _Run, epoch: int, row: dict, final: bool) -> dict:
    """Validate when due, keep the best and last checkpoints, write the log; the metrics."""
    state, val_ds = run.state, run.val_ds
    validate = len(val_ds) > 0 and (epoch % run.val_every == 0 or final)
    metrics = {}
    if validate:
        metrics = evaluate(run.model, val_ds, run.device, run.cfg.batch_size, run.use_amp)
        row.update({f"val_{k}": v for k, v in metrics.items()})
    row["seconds"] = run.elapsed()
    run.rows.append(row)
    state.update(epoch=epoch, elapsed=run.elapsed())
    if not len(val_ds) or (validate and _better(metrics, state)):
        state.update(best=metrics.get("pq", float("nan")),
                     best_loss=metrics.get("loss", np.inf), bad_epochs=0)  # fmt: skip
        run.checkpoint(run.out / BEST, {**metrics, "epoch": epoch})
    elif validate:
        state["bad_epochs"] += 1
    run.checkpoint(run.out / LAST, {**metrics, "epoch": epoch})
    _write_log(run.out / LOG, run.rows)
    log.info("%s", epoch_line(row))
    return metrics


def epoch_line(row: dict) -> str:
    """One log line per epoch; validation figures only on epochs that validated."""
    text = f"epoch {row['epoch']} (step {row['step']}): train loss {row.get('train_total', 0):.4f}"
    if "val_pq" in row:
        text += f", val PQ {row['val_pq']:.3f}, cls acc {row.get('val_cls_acc', float('nan')):.3f}"
    return text + f" ({row['seconds']:.0f} s)"


def _train(dataset_zarr: Path, out: Path, cfg: TrainConfig, resume, progress: bool) -> Path:
    run = _prepare_run(dataset_zarr, out, cfg, resume)
    run.state["stop"] = ""  # a resumed run stops for its own reason
    for epoch in range(run.state["epoch"] + 1, run.last_epoch + 1):
        row, budget_spent = _train_epoch(run, epoch, progress)
        _finish_epoch(run, epoch, row, final=budget_spent or epoch == run.last_epoch)
        if budget_spent:
            break
        if len(run.val_ds) and run.state["bad_epochs"] >= run.cfg.patience:
            run.state["stop"] = "early_stop"
            log.info("early stop: no PQ gain in %d validations", run.cfg.patience)
            break
    else:
        run.state["stop"] = run.state["stop"] or "epochs"
    if run.state["stop"] == "time_cap":
        log.warning("time cap of %g min reached at step %d of %d: this run is shorter than "
                    "its step budget and not reproducible", run.cfg.max_minutes,
                    run.state["step"], run.total_steps)  # fmt: skip
    if not (out / BEST).exists():  # resumed a finished run, or zero epochs: keep last
        run.checkpoint(out / BEST, {"epoch": run.state["epoch"]})
    _write_run_record(run)
    return out / BEST


def _write_run_record(run: _Run) -> None:
    """``run.json`` (what this run was: steps, stop reason, seed, threads, versions) and
    ``curves.png``."""
    import json

    import torch

    from wsi_stnuc import __version__
    from wsi_stnuc.training.curves import plot_training_curves

    state = run.state
    record = {
        "steps": state["step"], "step_budget": run.total_steps, "epochs": state["epoch"],
        "stop": state["stop"], "time_capped": state["stop"] == "time_cap",
        "seconds": run.elapsed(), "seed": run.cfg.seed, "threads": torch.get_num_threads(),
        "device": str(run.device),
        "best_val_pq": state["best"] if np.isfinite(state["best"]) else None,
        "versions": {"wsi_stnuc": __version__, "torch": torch.__version__,
                     "numpy": np.__version__},
    }  # fmt: skip
    with atomic_path(run.out / RUN) as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=float))
    plot_training_curves(run.rows, run.out / CURVES, classes=run.train_ds.classes.names)


def config_from_dict(values: dict) -> TrainConfig:
    """A TrainConfig from a dict (e.g. a checkpoint's ``train_config``); unknown keys rejected."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown training options: {sorted(unknown)}")
    return TrainConfig(**values)

"""CLI: ``wsi-stnuc dataset`` (LabelSet + slide -> zarr patches) and ``wsi-stnuc train``."""

from __future__ import annotations

from pathlib import Path

import click

_PATH = click.Path(path_type=Path)
_EXISTING = click.Path(exists=True, path_type=Path)


def _sections(slides, labels, sections_csv, slide_mpp, val_sections):
    """Sections from repeated --slide/--labels pairs and/or a CSV (slide, labels[, name,
    slide_mpp, val]); relative CSV paths are relative to the CSV."""
    import pandas as pd

    from wsi_stnuc.errors import InputError
    from wsi_stnuc.training.dataset import Section

    if len(slides) != len(labels):
        raise click.UsageError(
            f"give --slide and --labels in pairs (got {len(slides)} slides, {len(labels)} labels)"
        )
    out = [Section(s, lab, slide_mpp=slide_mpp) for s, lab in zip(slides, labels, strict=True)]
    if sections_csv is not None:
        try:
            table = pd.read_csv(sections_csv)
        except (OSError, ValueError) as exc:
            raise InputError(sections_csv, f"cannot read the sections CSV ({exc})") from exc
        missing = {"slide", "labels"} - set(table.columns)
        if missing:
            raise InputError(sections_csv, f"sections CSV lacks columns {sorted(missing)}")
        base = Path(sections_csv).parent
        for row in table.to_dict("records"):
            paths = [Path(str(row[c])) for c in ("slide", "labels")]
            paths = [p if p.is_absolute() else base / p for p in paths]
            for p in paths:
                if not p.exists():
                    raise InputError(sections_csv, f"row names a missing file: {p}")
            name = row.get("name")
            mpp = row.get("slide_mpp")
            out.append(Section(
                paths[0], paths[1], name=None if pd.isna(name) else str(name),
                slide_mpp=slide_mpp if mpp is None or pd.isna(mpp) else float(mpp),
                val=str(row.get("val", "")).strip().lower() in ("1", "true", "yes", "val"),
            ))  # fmt: skip
    if not out:
        raise click.UsageError("give --slide/--labels pairs or --sections CSV")
    unknown = set(val_sections) - {s.name or Path(s.slide).stem for s in out}
    if unknown:
        raise click.UsageError(f"--val-section names no section: {', '.join(sorted(unknown))}")
    for s in out:
        s.val = s.val or (s.name or Path(s.slide).stem) in val_sections
    return out


@click.command("dataset")
@click.option("--slide", "slides", type=_EXISTING, multiple=True,
              help="H&E whole-slide image of one section (repeat, paired with --labels).")  # fmt: skip
@click.option("--labels", type=_EXISTING, multiple=True,
              help="LabelSet GeoParquet of that section (repeat, in the order of --slide).")  # fmt: skip
@click.option("--sections", "sections_csv", type=_EXISTING, default=None,
              help="CSV of sections: slide, labels and optional name, slide_mpp, val columns.")  # fmt: skip
@click.option("--val-section", "val_sections", multiple=True,
              help="Send this whole section (by name, default its slide's file stem) to "
                   "validation (repeatable).")  # fmt: skip
@click.option("--out", type=_PATH, required=True, help="Output patch dataset (DS.zarr).")
@click.option("--mpp", type=float, default=0.5, show_default=True, help="Model µm/px.")
@click.option("--patch", type=int, default=256, show_default=True, help="Patch size (model px).")
@click.option("--stride", type=int, default=None, help="Patch step (model px; default: patch).")
@click.option("--taxonomy", type=_EXISTING, default=None,
              help="Taxonomy YAML (e.g. from 'wsi-stnuc taxonomy') to re-class the LabelSet "
                   "with (default: the LabelSet's own classes).")  # fmt: skip
@click.option("--min-confidence", type=float, default=0.2, show_default=True,
              help="With --taxonomy: typing confidence below which a cell is unknown.")  # fmt: skip
@click.option("--block-um", type=float, default=256.0, show_default=True,
              help="Side of the spatial blocks the train/val split draws.")  # fmt: skip
@click.option("--val-fraction", type=float, default=0.2, show_default=True)
@click.option("--snap-um", type=float, default=None,
              help="Move each ST nucleus onto the H&E nucleus it overlaps, up to this far.")  # fmt: skip
@click.option("--ignore-unlabelled", is_flag=True,
              help="H&E nuclei that no ST nucleus touches get loss weight 0, not background.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--slide-mpp", type=float, default=None,
              help="Override the slides' level-0 µm/px (for files without it).")  # fmt: skip
def dataset_cmd(slides, labels, sections_csv, val_sections, out, mpp, patch, stride, taxonomy,
                min_confidence, block_um, val_fraction, snap_um, ignore_unlabelled, seed,
                slide_mpp) -> None:  # fmt: skip
    """Cut training patches (image + targets) around labelled nuclei of one or more sections
    into one zarr dataset, split by section and spatial block."""
    from wsi_stnuc.classes import load_taxonomy
    from wsi_stnuc.errors import InputError
    from wsi_stnuc.st.labels import apply_taxonomy, read_labelset
    from wsi_stnuc.training.dataset import build_section_dataset, open_patch_dataset

    sections = _sections(slides, labels, sections_csv, slide_mpp, val_sections)
    tax = load_taxonomy(taxonomy) if taxonomy is not None else None
    classes = None
    for section in sections:
        path = section.labels
        gdf, own = read_labelset(path)
        if tax is not None:
            gdf, own = apply_taxonomy(gdf, tax, min_confidence=min_confidence), tax.classes
        if classes is not None and own.names != classes.names:
            raise InputError(path, f"classes {own.names} differ from the first section's "
                                   f"{classes.names}; re-class all with --taxonomy")  # fmt: skip
        classes, section.labels = own, gdf
        section.name = section.name or Path(section.slide).stem
    path = build_section_dataset(
        sections, out, classes=classes, mpp=mpp, patch=patch, stride=stride,
        block_um=block_um, val_fraction=val_fraction, seed=seed, snap_um=snap_um,
        ignore_unlabelled=ignore_unlabelled, progress=True,
    )  # fmt: skip
    attrs = open_patch_dataset(path).attrs
    click.echo(
        f"{path}: {attrs['n_train']} training + {attrs['n_val']} validation patches of "
        f"{patch} px at {mpp:g} µm/px from {len(sections)} section(s); classes "
        f"{', '.join(classes.names)}"
    )
    repairs = attrs.get("label_repairs", {})
    if snap_um or ignore_unlabelled:
        click.echo(f"label repairs: {repairs.get('snapped', 0)} ST nuclei snapped, "
                   f"{repairs.get('ignored_px', 0)} px of unlabelled nuclei ignored")  # fmt: skip


@click.command("train")
@click.argument("dataset", type=_EXISTING)
@click.option("--out", type=_PATH, required=True, help="Output folder (best.pt, last.pt, log.csv).")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--batch-size", type=int, default=None, help="Default: 4 on CPU, 16 on CUDA.")
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--width", type=int, default=None, help="Network width; default 8 CPU, 32 CUDA.")
@click.option("--depth", type=int, default=4, show_default=True)
@click.option("--encoder", default="unet", show_default=True, help="'unet' or 'timm:NAME'.")
@click.option("--pretrained", type=_EXISTING, default=None, help="Local encoder weights file.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps.")
@click.option("--max-minutes", type=float, default=None, help="Stop training after this long.")
@click.option("--max-steps", type=int, default=None,
              help="Stop after this many optimizer steps (overrides --epochs).")  # fmt: skip
@click.option("--augment", "augment_preset", type=click.Choice(["strong", "light", "none"]),
              default="strong", show_default=True,
              help="Colour augmentation (strong: robust to other labs' stains).")  # fmt: skip
@click.option("--soft-classes", is_flag=True,
              help="Train the class head on the typing's class probabilities (soft targets) "
                   "instead of hard classes; needs a dataset from a LabelSet with them.")  # fmt: skip
@click.option("--patience", type=int, default=8, show_default=True,
              help="Epochs without validation PQ gain before stopping.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader workers.")
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
@click.option("--resume", type=_EXISTING, default=None, help="Continue from a last.pt.")
def train_cmd(dataset, out, epochs, batch_size, lr, width, depth, encoder, pretrained, device,
              max_minutes, max_steps, augment_preset, soft_classes, patience, seed, workers,
              threads, resume) -> None:  # fmt: skip
    """Train the nucleus network on a patch dataset."""
    import json

    from wsi_stnuc.model.device import check_device
    from wsi_stnuc.training.train import CURVES, RUN, TrainConfig, train_model

    check_device(device)  # once, before the dataset is opened: one line, exit 2
    cfg = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, width=width, depth=depth, encoder=encoder,
        pretrained_path=str(pretrained) if pretrained else None, device=device,
        max_minutes=max_minutes, patience=patience, seed=seed, num_workers=workers,
        threads=threads, max_steps=max_steps, augment=augment_preset != "none",
        augment_preset="strong" if augment_preset == "none" else augment_preset,
        soft_classes=soft_classes,
    )  # fmt: skip
    best = train_model(dataset, out, cfg, resume=resume)
    # The epochs were logged as they ran; stdout gets the outcome once, not the log again.
    run = json.loads((Path(out) / RUN).read_text())
    pq = run["best_val_pq"]
    click.echo(f"{run['steps']} steps in {run['epochs']} epochs (stopped: {run['stop']}); "
               f"best validation PQ {'–' if pq is None else f'{pq:.3f}'}")  # fmt: skip
    if run["time_capped"]:
        click.secho(f"WARNING: --max-minutes stopped training at step {run['steps']} of "
                    f"{run['step_budget']}", fg="yellow")  # fmt: skip
    click.echo(f"best checkpoint: {best}; curves: {Path(out) / CURVES}")


COMMANDS = [dataset_cmd, train_cmd]

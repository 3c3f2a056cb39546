"""CLI: ``wsi-stnuc taxonomy`` (LabelSets + slides -> learned image-oriented taxonomy YAML)."""

from __future__ import annotations

from pathlib import Path

import click

_PATH = click.Path(path_type=Path, dir_okay=False)
_EXISTING = click.Path(exists=True, path_type=Path)


def _pairs(inputs: tuple[Path, ...]) -> list[tuple[Path, Path]]:
    """``LABELS SLIDE [LABELS SLIDE ...]`` as (labels, slide) pairs."""
    from wsi_stnuc.errors import InputError

    if len(inputs) % 2:
        raise InputError(
            inputs[-1], "expected LABELS.parquet SLIDE pairs (one slide after each LabelSet)"
        )
    pairs = list(zip(inputs[0::2], inputs[1::2], strict=True))
    for labels, _ in pairs:
        if labels.suffix.lower() != ".parquet":
            raise InputError(labels, "expected a LabelSet (.parquet) before each slide")
    return pairs


@click.command("taxonomy")
@click.argument("inputs", nargs=-1, required=True, type=_EXISTING)
@click.option("--out", type=_PATH, required=True, help="Taxonomy YAML to write.")
@click.option("--min-f1", type=float, default=None,
              help="Merge until every class reaches this F1 (default 0.7 without --n-classes).")  # fmt: skip
@click.option("--n-classes", type=int, default=None, help="Merge until this many classes remain.")
@click.option("--mpp", type=float, default=0.5, show_default=True, help="Crop µm/px.")
@click.option("--figure", type=_PATH, default=None,
              help="PNG of confusion before/after and the merge tree (default: OUT with .png).")  # fmt: skip
@click.option(
    "--crop-size", type=int, default=32, show_default=True, help="Crop side (px at --mpp)."
)
@click.option("--block-um", type=float, default=250.0, show_default=True,
              help="Side of the spatial blocks cross-validation holds out together.")  # fmt: skip
@click.option("--min-confidence", type=float, default=0.0, show_default=True,
              help="Leave out cells typed with less confidence than this.")  # fmt: skip
@click.option("--folds", type=int, default=5, show_default=True)
@click.option("--epochs", type=int, default=12, show_default=True)
@click.option("--min-support", type=int, default=10, show_default=True,
              help="Types with fewer cells go to unknown.")  # fmt: skip
@click.option("--unknown-f1", type=float, default=0.3, show_default=True,
              help="Classes still below this F1 after merging go to unknown.")  # fmt: skip
@click.option("--checkpoint", type=_EXISTING, default=None,
              help="Classify with a trained segmentation model's encoder features "
                   "(logistic regression) instead of the crop CNN.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--slide-mpp", type=float, default=None,
              help="Override the slides' level-0 µm/px (for files without it).")  # fmt: skip
def taxonomy_cmd(inputs, out, min_f1, n_classes, mpp, figure, crop_size, block_um, min_confidence,
                 folds, epochs, min_support, unknown_f1, checkpoint, seed, slide_mpp) -> None:  # fmt: skip
    """Learn image-oriented classes: INPUTS are LABELS.parquet SLIDE pairs.

    A crop CNN is cross-validated by spatial blocks on the LabelSets' fine cell types; the
    types the image confuses are merged, and types it cannot place go to 'unknown'. Writes
    OUT (YAML, edit freely), OUT_confusion_before/after.csv and a PNG figure.
    """
    from wsi_stnuc.slide.registry import open_slide
    from wsi_stnuc.st.labels import read_labelset
    from wsi_stnuc.st.review import st_typed
    from wsi_stnuc.taxonomy.crop_classifier import image_confusion
    from wsi_stnuc.taxonomy.learn import learn_taxonomy, write_learned_taxonomy

    pairs = []
    for labels_path, slide_path in _pairs(inputs):
        labels, _ = read_labelset(labels_path)
        typed = st_typed(labels)  # a reviewed LabelSet: only rows still classed by ST typing
        if len(typed) < len(labels):
            click.echo(f"{labels_path}: {len(labels) - len(typed)} reviewed or drawn nuclei "
                       "set aside (their class is not the ST type's)")  # fmt: skip
        pairs.append((typed, open_slide(slide_path, mpp=slide_mpp)))
    try:
        cv = image_confusion(
            pairs,
            mpp=mpp,
            size=crop_size,
            block_um=block_um,
            min_confidence=min_confidence,
            n_splits=folds,
            epochs=epochs,
            seed=seed,
            checkpoint=checkpoint,
            progress=True,
        )
    finally:
        for _, reader in pairs:
            reader.close()
    learned = learn_taxonomy(
        cv.confusion,
        min_f1=min_f1,
        n_classes=n_classes,
        min_support=min_support,
        unknown_f1=unknown_f1,
    )
    written = write_learned_taxonomy(learned, out, figure=figure or out.with_suffix(".png"))
    for name, f1 in learned.f1_after.items():
        click.echo(f"{name}\tF1 {f1:.2f}")
    if learned.unknown_types:
        click.echo(f"unknown\t{', '.join(learned.unknown_types)}")
    for kind, path in written.items():
        click.echo(f"wrote {kind}: {path}")


COMMANDS = [taxonomy_cmd]

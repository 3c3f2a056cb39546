"""CLI: ``wsi-stnuc demo`` — the whole chain on an embedded synthetic paired bundle."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo_out"),
    show_default=True,
    help="Folder for everything the demo writes.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the synthetic bundle and training.",
)
@click.option(
    "--minutes",
    type=float,
    default=None,
    help="Cap on training time in minutes (default 3.5; training normally ends sooner).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def demo(out_dir: Path, seed: int, minutes: float | None, device: str) -> None:
    """Generate a synthetic H&E slide + Xenium bundle, build labels from expression, train the
    nucleus network, run whole-slide inference, export GeoParquet/QuPath GeoJSON and print
    metrics on a held-out strip. All data and metrics here are SYNTHETIC."""
    from wsi_stnuc.pipeline import DemoConfig, run_demo

    config = DemoConfig(seed=seed, device=device)
    if minutes is not None:
        config.max_train_minutes = minutes
    run_demo(out_dir, config, report=click.echo)


COMMANDS = [demo]

"""CLI: ``wsi-stnuc demo`` — the whole chain on an embedded synthetic paired bundle."""

from __future__ import annotations

import logging
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
@click.option("--steps", type=int, default=None,
              help="Training steps (default 400): the budget that makes the figures the same "
                   "on any machine and load.")  # fmt: skip
@click.option("--threads", type=int, default=None,
              help="torch CPU threads, pinned for the whole demo (default 2); figures are "
                   "reproducible for a seed and thread count.")  # fmt: skip
@click.option(
    "--minutes",
    type=float,
    default=None,
    help="Safety cap on training time in minutes (default 120); if it stops training, the "
    "demo says so and its figures depend on the machine.",
)
@click.option("--device", default="cpu", show_default=True,
              help="cpu (reproducible), cuda or cuda:N (faster, figures vary run to run).")  # fmt: skip
@click.pass_context
def demo(ctx, out_dir: Path, seed: int, steps: int | None, threads: int | None,
         minutes: float | None, device: str) -> None:  # fmt: skip
    """Generate a synthetic H&E slide + Xenium bundle, build labels from expression, train the
    nucleus network, run whole-slide inference, export GeoParquet/QuPath GeoJSON and print
    metrics on a held-out strip. All data and metrics here are SYNTHETIC."""
    from wsi_stnuc.pipeline import DemoConfig, run_demo

    config = DemoConfig(seed=seed, device=device)
    for name, value in (("steps", steps), ("threads", threads), ("max_train_minutes", minutes)):
        if value is not None:
            setattr(config, name, value)
    # The demo narrates every stage on stdout; the stages' own INFO lines would say it all a
    # second time on stderr. Warnings still show (and --debug shows everything).
    if not ctx.find_root().meta.get("wsi_stnuc.debug"):
        logging.getLogger("wsi_stnuc").setLevel(logging.WARNING)
    run_demo(out_dir, config, report=click.echo)


COMMANDS = [demo]

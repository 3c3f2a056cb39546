"""Entry point of the ``wsi-stnuc`` command: a thin click shell over the library.

Each command group lives in its own module and exposes ``COMMANDS`` (a list of click
commands); this module only assembles them and turns user errors into one clear line.
"""

from __future__ import annotations

import logging
import sys

import click

from wsi_stnuc import __version__
from wsi_stnuc.errors import InputError

from . import (
    demo_cmd,
    eval_cmd,
    infer_cmds,
    models_cmd,
    slide_cmds,
    st_cmds,
    taxonomy_cmd,
    train_cmds,
)

# Errors that describe bad input or the machine (a missing file, a full disk): shown as one
# line, no traceback; an OSError's message names the file it concerns.
USER_ERRORS = (InputError, OSError, ValueError)


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            if ctx.meta.get("wsi_stnuc.debug"):
                raise
            click.secho(f"error: {exc}", fg="red", err=True)
            click.echo("(run with --debug for the full traceback)", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsi-stnuc")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logging.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """wsi-stnuc: teach a network to segment and classify nuclei in H&E whole-slide images,
    supervised by cell-level spatial transcriptomics (10x Xenium and the like)."""
    ctx.meta["wsi_stnuc.debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


_MODULES = (demo_cmd, slide_cmds, st_cmds, taxonomy_cmd, train_cmds, eval_cmd, infer_cmds,
            models_cmd)  # fmt: skip
for _module in _MODULES:
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli(prog_name="wsi-stnuc")


if __name__ == "__main__":
    main()

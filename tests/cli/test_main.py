from __future__ import annotations

import click
from click.testing import CliRunner

from wsi_stnuc.errors import InputError
from wsi_stnuc_cli import main as cli_main


def test_help_lists_the_commands():
    result = CliRunner().invoke(cli_main.cli, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "info", "labels", "train", "infer", "evaluate"):
        assert command in result.output


def _failing_command():
    @click.command("explode")
    def explode():
        raise InputError("/data/slide.svs", "not a slide")

    return explode


def test_user_errors_are_one_line_without_traceback(monkeypatch):
    cli_main.cli.add_command(_failing_command())
    try:
        result = CliRunner().invoke(cli_main.cli, ["explode"])
        assert result.exit_code == 2
        assert "error: /data/slide.svs: not a slide" in result.output
        assert "Traceback" not in result.output
        debug = CliRunner().invoke(cli_main.cli, ["--debug", "explode"])
        assert isinstance(debug.exception, InputError)
    finally:
        cli_main.cli.commands.pop("explode")

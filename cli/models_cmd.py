"""CLI: ``wsi-stnuc models`` lists the models shipped with the package and shows their cards."""

from __future__ import annotations

import json

import click


@click.command("models")
@click.option("--info", "info", default=None, metavar="NAME",
              help="Print the model card of a shipped model (JSON).")  # fmt: skip
def models_cmd(info: str | None) -> None:
    """List the shipped models (the default is used by `infer` when --model is omitted)."""
    from wsi_stnuc.model.zoo import DEFAULT_MODEL, model_card, shipped_models

    if info is not None:
        click.echo(json.dumps(model_card(info), indent=1))
        return
    names = shipped_models()
    if not names:
        click.echo("no models are shipped with this installation")
        return
    for name in names:
        card = model_card(name)
        mark = " (default)" if name == DEFAULT_MODEL else ""
        classes = ", ".join(card.get("classes", []))
        click.echo(f"{name}{mark}: {card.get('summary', '')} [{card.get('mpp')} µm/px; "
                   f"classes {classes}; {card.get('size_mb')} MB]")  # fmt: skip


COMMANDS = [models_cmd]

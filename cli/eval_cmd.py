"""CLI: `wsi-stnuc evaluate`."""

COMMANDS: list = []

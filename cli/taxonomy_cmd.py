"""CLI: `wsi-stnuc taxonomy`."""

COMMANDS: list = []

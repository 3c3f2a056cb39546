"""Errors meant for users: the message names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input (missing/corrupt file, inconsistent tables, missing metadata).

    The CLI prints the message without a traceback; ``--debug`` shows it.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)

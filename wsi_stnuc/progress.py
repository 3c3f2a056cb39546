"""Progress bars for people at a terminal, nothing for log files.

A bar redrawn with carriage returns turns a log file into one unreadable line per update, so
every bar in the package goes through :func:`bar_disable`: shown only when asked for *and*
stderr is a terminal (tqdm's ``disable=None``), never in a redirected or captured stream.
"""

from __future__ import annotations

__all__ = ["bar_disable"]


def bar_disable(progress: bool) -> bool | None:
    """The ``disable`` argument of ``tqdm``: True when not wanted, None (= off unless stderr
    is a TTY) when wanted."""
    return None if progress else True

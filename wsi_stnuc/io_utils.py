"""Small I/O helpers shared by every writer."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file (or every file of a temporary folder) is fsynced before the rename and
    the folder after it, so a crash or power cut leaves the old file or the whole new one under
    the final name, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        # The folder's own entry only: walking it would touch (and race with) everything that
        # other writers create and remove beside this file.
        fsync_path(path.parent, recursive=False)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


def fsync_path(path: str | Path, *, recursive: bool = True) -> None:
    """Flush a file, or a folder's entries (and, with ``recursive``, the files in it), to disk."""
    path = Path(path)
    targets = [path]
    if path.is_dir() and recursive:
        targets = [p for p in path.rglob("*") if p.is_file()] + [path]
    for target in targets:
        flags = os.O_RDONLY | (os.O_DIRECTORY if target.is_dir() else 0)
        try:
            fd = os.open(target, flags)
        except OSError:  # e.g. a folder that cannot be opened on this platform
            continue
        try:
            os.fsync(fd)
        except OSError:
            # some file systems cannot sync a folder (EINVAL); a file's sync must not fail
            if not target.is_dir():
                raise
        finally:
            os.close(fd)


def shared_data_dir() -> Path:
    """Where the real public data lives: ``$WSI_STNUC_DATA`` or ``../shared/data`` from the repo."""
    env = os.environ.get("WSI_STNUC_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"

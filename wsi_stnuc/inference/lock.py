"""Lock files: one run at a time writes a slide's outputs (or the cohort manifest).

A lock is a small JSON file created atomically (``O_CREAT | O_EXCL``) holding the holder's
pid, host, process start time and a random token. A lock whose holder is gone (same host, pid
not running or running a different process since) is stale and is taken over; a lock held on
another host is respected, since its process cannot be checked from here. Taking over goes
through a second, short-lived guard file, so of two runs that find the same stale lock only
one replaces it, and a lock freshly taken by one is never removed by the other.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from wsi_stnuc.errors import InputError
from wsi_stnuc.io_utils import atomic_path

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
_GUARD_SUFFIX = ".takeover"
# an unreadable lock younger than this may be one whose holder is still writing it
_UNREADABLE_GRACE_S = 10.0


class LockHeld(InputError):
    """Another live process holds the lock; ``holder`` is its lock record."""

    def __init__(self, path: Path, holder: dict):
        self.holder = holder
        since = holder.get("started", "?")
        super().__init__(
            path,
            f"held by pid {holder.get('pid')} on {holder.get('host')} since {since} (another "
            "run is writing here; wait for it, or delete the lock if that process is gone)",
        )


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux ``/proc``), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: starttime, after the command name


def _record() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "proc_start": _start_time(os.getpid()),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "token": uuid.uuid4().hex,
    }


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written by a holder killed between create and write: no owner


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def is_stale(holder: dict) -> bool:
    """True if the lock's holder is certainly gone."""
    if not holder or "pid" not in holder:
        return True
    if holder.get("host") != socket.gethostname():
        return False
    pid = int(holder["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's live process
        return False
    started = holder.get("proc_start")
    return started is not None and _start_time(pid) not in (None, started)


def _create(path: Path, record: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(record))
        fh.flush()
        os.fsync(fh.fileno())
    return True


def _take_over(path: Path, record: dict) -> bool:
    """Replace a stale lock with ``record``; False if the lock turned out live or was taken."""
    guard = path.with_name(path.name + _GUARD_SUFFIX)
    if not _create(guard, record):
        if is_stale(_read(guard) or {}):  # a taker killed mid-takeover
            guard.unlink(missing_ok=True)
        return False
    try:
        holder = _read(path)
        if holder is None:
            return _create(path, record)
        if not is_stale(holder) or (not holder and _age(path) < _UNREADABLE_GRACE_S):
            return False  # live, or (unreadable) a holder that may still be writing it
        log.warning("%s: taking over the lock of a process that is gone (pid %s on %s)",
                    path, holder.get("pid"), holder.get("host"))  # fmt: skip
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(record))
        return True
    finally:
        guard.unlink(missing_ok=True)


def acquire(path: str | Path, *, wait: float = 0.0) -> dict:
    """Take the lock at ``path``, waiting up to ``wait`` seconds; returns this holder's record.

    Raises :class:`LockHeld` when a live process keeps it longer.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = _record()
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        if _create(path, record) or _take_over(path, record):
            return record
        holder = _read(path)
        if holder is None:
            continue  # released between our two attempts
        if time.monotonic() >= deadline and not is_stale(holder):
            raise LockHeld(path, holder)
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def release(path: str | Path, record: dict) -> None:
    """Drop the lock if it is still ours (a lock taken over from us stays)."""
    path = Path(path)
    holder = _read(path)
    if holder and holder.get("token") == record["token"]:
        path.unlink(missing_ok=True)


@contextmanager
def locked(path: str | Path, *, wait: float = 0.0) -> Iterator[dict]:
    """``acquire`` ... ``release`` as a context manager."""
    record = acquire(path, wait=wait)
    try:
        yield record
    finally:
        release(path, record)

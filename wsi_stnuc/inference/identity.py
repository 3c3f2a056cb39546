"""What a result was made from: the slide's identity, stable output names, settings keys.

A finished or partial result may be reused only for the same slide file, model and settings.
The slide is known by its resolved path plus its size and modification time (a content hash
of a multi-gigabyte slide would cost more than many runs' reads); the settings by a hash of
their canonical JSON. Output names come from the slide's own path, never from which other
files a run sees, so the same slide always gets the same name and two slides never share one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
# files whose stat stands for a zarr store's (its chunks are too many to stat each run)
_ZARR_META = ("zarr.json", ".zattrs", ".zgroup", ".zarray")
# hex digits of the path hash in an output name: 8 make a clash between two slides of one
# cohort a one-in-4-billion event per pair, and the name stays readable
NAME_HASH_DIGITS = 8


@dataclass(frozen=True)
class SlideIdentity:
    """A slide file as it is now: resolved path, size in bytes, mtime in ns."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | Path) -> SlideIdentity:
        """The identity of ``path`` (a file or a zarr folder); OSError if it cannot be read."""
        resolved = Path(path).resolve()
        stats = [resolved.stat()]
        if resolved.is_dir():
            stats += [(resolved / m).stat() for m in _ZARR_META if (resolved / m).is_file()]
        return cls(
            str(resolved), sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def differs(self, other: dict | None) -> str | None:
        """Why a recorded identity (``to_dict()`` form) is not this one, or None if it is."""
        if not other:
            return "no slide identity recorded"
        if other.get("path") != self.path:
            return f"made from another file ({other.get('path')})"
        if other.get("size") != self.size or other.get("mtime_ns") != self.mtime_ns:
            return "the slide file changed since (size or modification time)"
        return None


def safe_name(name: str) -> str:
    """A file-name stem that stays inside the output folder: letters, digits, ``._-`` only,
    no leading dots (so ``../x`` -> ``x``, ``/abs/p`` -> ``abs_p``)."""
    cleaned = UNSAFE_CHARS.sub("_", str(name)).strip("._-")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    return cleaned


def output_name(path: str | Path, stem: str) -> str:
    """``STEM-HASH``: the sanitised ``stem`` plus a hash of the slide's resolved path.

    The hash keeps apart slides whose stems clean up alike (``a_b.svs``, ``a b.tif``) or
    repeat across folders (``case1/slide.svs``, ``case2/slide.svs``), whatever else is in
    the folder and in whichever order the files come.
    """
    digest = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:NAME_HASH_DIGITS]
    return f"{safe_name(stem) or 'slide'}-{digest}"


def settings_key(settings: dict) -> str:
    """A hash of ``settings`` (canonical JSON): equal keys, equal results."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def settings_diff(old: dict | None, new: dict) -> list[str]:
    """Top-level settings whose values differ (canonical JSON), for the log."""
    old = json.loads(json.dumps(old or {}, default=str))
    new = json.loads(json.dumps(new, default=str))
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))

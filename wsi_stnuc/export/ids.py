"""Deterministic object ids for QuPath: UUIDs from a key and an integer id, unique per file.

Object ids are UUIDs (RFC 9562 version 8, i.e. custom hash-based) computed from a key (the
slide name by default) and the nucleus id with a vectorised 64-bit mixer, so a rerun writes
the same ids and QuPath scripts can match objects between runs. QuPath keeps a file's UUIDs
but silently keeps duplicates too, so :class:`UniqueIds` makes sure no id repeats in a file.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective, well-mixed 64-bit hash, vectorised over uint64."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def deterministic_uuids(key: str, ids: np.ndarray) -> np.ndarray:
    """UUID strings (version 8, RFC 4122 variant) that depend only on ``key`` and each id.

    Two 64-bit halves come from SplitMix64 of the id xor two key-derived seeds; version and
    variant bits are then set, so ``uuid.UUID(s)`` and Java's ``UUID.fromString`` accept them.
    """
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    seed_hi = np.uint64(int.from_bytes(digest[:8], "little"))
    seed_lo = np.uint64(int.from_bytes(digest[8:16], "little"))
    x = np.asarray(ids).astype(np.int64).view(np.uint64)
    hi = _splitmix64(x ^ seed_hi)
    lo = _splitmix64(_splitmix64(x ^ seed_lo))
    hi = (hi & np.uint64(0xFFFFFFFFFFFF0FFF)) | np.uint64(0x8000)  # version 8
    lo = (lo & np.uint64(0x3FFFFFFFFFFFFFFF)) | np.uint64(0x8000000000000000)  # variant 10
    raw = np.stack([hi, lo], axis=1).astype(">u8").view(np.uint8).reshape(-1, 16)
    hexed = np.empty((raw.shape[0], 32), dtype=np.uint8)
    hexed[:, 0::2] = _HEX[raw >> 4]
    hexed[:, 1::2] = _HEX[raw & 15]
    out = np.full((raw.shape[0], 36), ord("-"), dtype=np.uint8)
    for dst, src in ((0, (0, 8)), (9, (8, 12)), (14, (12, 16)), (19, (16, 20)), (24, (20, 32))):
        out[:, dst : dst + src[1] - src[0]] = hexed[:, src[0] : src[1]]
    return out.view("S36").ravel().astype(str)


UUID_PATTERN = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class UniqueIds:
    """Ids for the rows of one file, in order, none repeated.

    A row whose id the file already used (chunks that reuse nucleus ids, a repeated or
    malformed id in an id column) gets an id derived from its row number in the file
    instead; :attr:`replaced` counts them. Increasing integer ids, the usual case, cost
    one comparison per chunk.
    """

    def __init__(self, key: str):
        self.key = key
        self.rows = 0
        self.replaced = 0
        self._top: int | None = None
        self._ints: list[np.ndarray] = []
        self._texts: set[str] = set()

    def from_ints(self, ids: np.ndarray) -> np.ndarray:
        """UUID strings for integer ids (deterministic in ``key`` and each id)."""
        ids = np.asarray(ids).astype(np.int64)
        if len(ids) == 0:
            return np.zeros(0, dtype="<U36")
        fresh = bool((np.diff(ids) > 0).all()) and (self._top is None or ids[0] > self._top)
        repeated = np.zeros(len(ids), dtype=bool)
        if not fresh:
            _, first = np.unique(ids, return_index=True)
            repeated[:] = True
            repeated[first] = False
            if self._ints:
                repeated |= np.isin(ids, np.concatenate(self._ints))
        self._ints.append(ids)
        self._top = int(ids.max()) if self._top is None else max(self._top, int(ids.max()))
        return self._replace(deterministic_uuids(self.key, ids), repeated)

    def from_text(self, ids: np.ndarray) -> np.ndarray:
        """The given UUID strings, except repeated or malformed ones."""
        text = pd.Series(np.asarray(ids, dtype=object)).astype("string")
        well_formed = text.str.fullmatch(UUID_PATTERN.pattern).fillna(False).to_numpy(bool)
        lowered = text.str.lower()
        repeated = ~well_formed | lowered.duplicated().to_numpy() | lowered.isin(self._texts).to_numpy()
        self._texts.update(lowered[~repeated])
        out = lowered.fillna("").to_numpy(dtype="<U36")
        return self._replace(out, repeated)

    def _replace(self, uuids: np.ndarray, repeated: np.ndarray) -> np.ndarray:
        rows = self.rows + np.arange(len(uuids))
        self.rows += len(uuids)
        if repeated.any():
            uuids = uuids.copy()
            uuids[repeated] = deterministic_uuids(self.key + "|row", rows[repeated])
            self.replaced += int(repeated.sum())
        return uuids

"""Synthetic ``transcripts.parquet``: one row per decoded molecule, consistent with the counts.

Xenium counts a molecule in the cell-feature matrix only when its quality value ``qv`` is at
least 20. Each counted molecule becomes a row with ``qv >= 20`` placed uniformly inside its
cell; a further ``low_qv_fraction`` of rows with ``qv < 20`` is added (not in the matrix), so
transcript QC has something to remove, and ``unassigned_fraction`` of molecules fall outside
cells (``cell_id`` ``UNASSIGNED``), as ambient background does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import shapely

from wsi_stnuc.formats import Xenium

MIN_QV = 20.0
UNASSIGNED = "UNASSIGNED"  # cell_id of molecules outside every cell, as Xenium writes it


def _points_in(
    polys: np.ndarray, owner: np.ndarray, rng: np.random.Generator, rounds: int = 8
) -> np.ndarray:
    """Uniform points inside ``polys[owner]`` by vectorised rejection in each bounding box."""
    bounds = shapely.bounds(polys)[owner]
    xy = np.empty((len(owner), 2))
    todo = np.arange(len(owner))
    for _ in range(rounds):
        if len(todo) == 0:
            break
        lo, hi = bounds[todo, :2], bounds[todo, 2:]
        cand = lo + rng.random((len(todo), 2)) * (hi - lo)
        inside = shapely.contains_xy(polys[owner[todo]], cand[:, 0], cand[:, 1])
        xy[todo[inside]] = cand[inside]
        todo = todo[~inside]
    # Rare leftovers (very thin outlines): put them on the representative point.
    if len(todo):
        xy[todo] = shapely.get_coordinates(shapely.point_on_surface(polys[owner[todo]]))
    return xy


def sample_transcripts(
    cell_ids: Sequence[str],
    counts: np.ndarray,
    feature_names: Sequence[str],
    cells_um: np.ndarray,
    nuclei_um: np.ndarray,
    rng: np.random.Generator,
    *,
    low_qv_fraction: float = 0.05,
    unassigned_fraction: float = 0.08,
) -> pd.DataFrame:
    """Transcript table (µm) for ``counts`` (cells x features, controls included)."""
    counts = np.asarray(counts)
    cell_idx, feat_idx = np.nonzero(counts)
    reps = counts[cell_idx, feat_idx]
    good_owner = np.repeat(cell_idx, reps)
    good_feat = np.repeat(feat_idx, reps)
    n_low = rng.binomial(len(good_owner), low_qv_fraction / (1 - low_qv_fraction))
    pick = rng.integers(0, max(len(good_owner), 1), n_low) if len(good_owner) else []
    owner = np.concatenate([good_owner, good_owner[pick]])
    feat = np.concatenate([good_feat, good_feat[pick]])
    qv = np.concatenate(
        [rng.uniform(MIN_QV, 40.0, len(good_owner)), rng.uniform(5.0, MIN_QV - 0.01, n_low)]
    ).astype(np.float32)
    cells_um = np.asarray(cells_um, dtype=object)
    nuclei_um = np.asarray(nuclei_um, dtype=object)
    xy = _points_in(cells_um, owner, rng)
    in_nucleus = shapely.contains_xy(nuclei_um[owner], xy[:, 0], xy[:, 1])
    ids = np.asarray(cell_ids, dtype=object)[owner]
    # Ambient molecules: anywhere in the section's bounds, genes at their overall frequency.
    n_amb = rng.binomial(len(owner), unassigned_fraction) if len(owner) else 0
    if n_amb:
        x0, y0, x1, y1 = shapely.total_bounds(cells_um)
        amb_xy = np.c_[rng.uniform(x0, x1, n_amb), rng.uniform(y0, y1, n_amb)]
        xy = np.concatenate([xy, amb_xy])
        feat = np.concatenate([feat, feat[rng.integers(0, len(feat), n_amb)]])
        qv = np.concatenate([qv, rng.uniform(5.0, 40.0, n_amb).astype(np.float32)])
        in_nucleus = np.concatenate([in_nucleus, np.zeros(n_amb, dtype=bool)])
        ids = np.concatenate([ids, np.full(n_amb, UNASSIGNED, dtype=object)])
    order = np.lexsort((xy[:, 0], np.floor(xy[:, 1] / 50.0)))  # roughly by field of view
    names = np.asarray(feature_names, dtype=object)
    return pd.DataFrame(
        {
            "transcript_id": np.arange(len(ids), dtype=np.uint64),
            Xenium.CELL_ID: ids[order],
            Xenium.TX_OVERLAPS_NUCLEUS: in_nucleus[order].astype(np.uint8),
            Xenium.TX_FEATURE: names[feat[order]],
            Xenium.TX_X: xy[order, 0].astype(np.float32),
            Xenium.TX_Y: xy[order, 1].astype(np.float32),
            Xenium.TX_Z: rng.uniform(8.0, 20.0, len(ids)).astype(np.float32),
            Xenium.TX_QV: qv[order],
        }
    )

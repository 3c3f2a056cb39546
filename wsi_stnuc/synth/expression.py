"""Synthetic expression: marker genes per fine type, negative-binomial counts, a marker panel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from wsi_stnuc.io_utils import atomic_path

MARKERS: dict[str, tuple[str, ...]] = {
    "T": ("CD3E", "CD3D", "CD2", "TRAC"),
    "B": ("MS4A1", "CD79A", "CD19", "BANK1"),
    "Malignant": ("EPCAM", "KRT8", "ERBB2", "KRT7"),
    "Fibroblast": ("LUM", "COL1A1", "DCN", "PDGFRA"),
    "Endothelial": ("PECAM1", "VWF", "CD34", "EGFL7"),
}
# Shared immune marker: T and B both express it, so typing has to use the specific markers.
SHARED: dict[str, tuple[str, ...]] = {"PTPRC": ("T", "B")}
# Real Xenium breast-panel genes that no shipped marker panel uses: uninformative background.
BACKGROUND_GENES: tuple[str, ...] = (
    "ADAM9", "ANKRD28", "BASP1", "CCDC6", "CCPG1", "CTTN", "DSP", "ENAH", "FLNB", "HMGA1",
    "ITM2C", "JUP", "KARS", "LDHB", "OCIAD2", "PTRHD1", "SDC4", "SEC24A", "SMS", "TOMM7",
)  # fmt: skip
N_NEGATIVE_CONTROLS = 20


def panel_genes() -> list[str]:
    """All gene names of the synthetic panel, markers first."""
    genes = [g for gs in MARKERS.values() for g in gs] + list(SHARED)
    return genes + [g for g in BACKGROUND_GENES if g not in genes]


def mean_profiles(type_names: list[str], genes: list[str]) -> np.ndarray:
    """Expected counts (types x genes) for an average-sized cell."""
    mu = np.full((len(type_names), len(genes)), 0.25)
    col = {g: i for i, g in enumerate(genes)}
    for t, name in enumerate(type_names):
        for rank, g in enumerate(MARKERS.get(name, ())):
            mu[t, col[g]] = 14.0 / (1 + 0.35 * rank)
        for g, owners in SHARED.items():
            if name in owners:
                mu[t, col[g]] = 6.0
    return mu


def sample_counts(
    rng: np.random.Generator,
    kind: np.ndarray,
    type_names: list[str],
    genes: list[str],
    *,
    dispersion: float = 0.4,
    low_count_fraction: float = 0.08,
) -> tuple[np.ndarray, np.ndarray]:
    """Negative-binomial counts (cells x genes) and negative-control counts (cells x 20).

    Library size varies log-normally; a ``low_count_fraction`` of cells gets ~8x fewer
    transcripts (poorly captured cells), which QC should drop and typing should doubt.
    """
    n = len(kind)
    mu = mean_profiles(type_names, genes)[kind]
    size = np.exp(rng.normal(0, 0.35, n))
    low = rng.random(n) < low_count_fraction
    size[low] *= 0.12
    lam = rng.gamma(1 / dispersion, dispersion * mu * size[:, None])
    counts = rng.poisson(lam).astype(np.int32)
    controls = rng.poisson(0.02, (n, N_NEGATIVE_CONTROLS)).astype(np.int32)
    return counts, controls


def write_panel_yaml(path: str | Path, name: str = "wsi-stnuc synthetic panel") -> Path:
    """Marker panel for typing: ``name`` and ``types: {TypeName: [GENE, ...]}``."""
    doc = {"name": name, "types": {t: list(gs) for t, gs in MARKERS.items()}}
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path

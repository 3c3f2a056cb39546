"""Marker panels: YAML files of positive (and optional negative) marker genes per cell type.

Format::

    name: human_breast
    types: {T: [CD3E, CD3D, ...], Macrophage: [CD68, ...], ...}
    negative: {T: [CD68, EPCAM], ...}     # optional

Type names should be keys of the taxonomy's ``mapping`` so the image class follows. Shipped
panels (by name): ``human_breast``, ``immuno_oncology``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from wsi_stnuc.errors import InputError

log = logging.getLogger(__name__)

_DATA = Path(__file__).resolve().parents[1] / "data"


def shipped_panels() -> dict[str, Path]:
    """Name -> path of the panels shipped in ``wsi_stnuc/data`` (``panel_<name>.yaml``)."""
    return {p.stem.removeprefix("panel_"): p for p in sorted(_DATA.glob("panel_*.yaml"))}


@dataclass(frozen=True)
class Panel:
    """Marker genes per cell type."""

    name: str
    types: dict[str, list[str]]
    negative: dict[str, list[str]] = field(default_factory=dict)

    @property
    def genes(self) -> set[str]:
        return {g for gs in (*self.types.values(), *self.negative.values()) for g in gs}

    def restrict(self, genes) -> Panel:
        """The panel limited to ``genes`` (those measured); types left without any positive
        marker are dropped. Logs what is missing so users see a panel/assay mismatch."""
        have = set(genes)
        types = {t: [g for g in gs if g in have] for t, gs in self.types.items()}
        empty = sorted(t for t, gs in types.items() if not gs)
        missing = sorted(self.genes - have)
        if missing:
            log.info(
                "panel %s: %d marker genes not measured: %s",
                self.name,
                len(missing),
                ", ".join(missing[:30]) + (" ..." if len(missing) > 30 else ""),
            )
        if empty:
            log.warning(
                "panel %s: no marker measured for %s; those types are skipped",
                self.name,
                ", ".join(empty),
            )
        neg = {t: [g for g in gs if g in have] for t, gs in self.negative.items() if t in types}
        return Panel(
            self.name,
            {t: gs for t, gs in types.items() if gs},
            {t: gs for t, gs in neg.items() if gs and t not in empty},
        )


def load_panel(path_or_name: str | Path) -> Panel:
    """Read a panel YAML (a path, or the name of a shipped panel)."""
    shipped = shipped_panels()
    if isinstance(path_or_name, str) and path_or_name in shipped:
        path = shipped[path_or_name]
    else:
        path = Path(path_or_name)
    if not path.exists():
        raise InputError(path, f"marker panel not found (shipped panels: {', '.join(shipped)})")
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(path, f"cannot read panel YAML ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("types"), dict) or not doc["types"]:
        raise InputError(path, "a panel needs a non-empty 'types: {TypeName: [GENE, ...]}' map")
    types, negative = {}, {}
    for key, target in (("types", types), ("negative", negative)):
        for t, genes in (doc.get(key) or {}).items():
            if not isinstance(genes, list) or not all(isinstance(g, str) for g in genes):
                raise InputError(path, f"{key}.{t} must be a list of gene names")
            target[str(t)] = list(dict.fromkeys(genes))
    unknown = sorted(set(negative) - set(types))
    if unknown:
        raise InputError(path, f"negative markers for types not in 'types': {unknown}")
    return Panel(str(doc.get("name", path.stem)), types, negative)

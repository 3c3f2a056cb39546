"""Image classes: the class table a model is trained on, and the taxonomy that maps
expression-derived fine cell types onto it.

Conventions shared by targets, training and inference:

* class ids in class maps: ``0`` background, ``1..K`` the table's classes in order;
* :data:`IGNORE_CLASS` (255) marks pixels of nuclei whose class is ``unknown``: they count for
  segmentation but not for the class loss;
* ``unknown`` is never one of the ``K`` trainable classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

IGNORE_CLASS = 255
UNKNOWN = "unknown"

# Tableau-like colours that stay distinct on H&E pink/purple.
DEFAULT_COLORS: dict[str, tuple[int, int, int]] = {
    "epithelial": (220, 50, 50),
    "neoplastic": (220, 50, 50),
    "inflammatory": (40, 90, 220),
    "connective": (40, 170, 70),
    "stromal": (40, 170, 70),
    "dead": (40, 40, 40),
    UNKNOWN: (160, 160, 160),
}
_PALETTE = [
    (228, 26, 28),
    (55, 126, 184),
    (77, 175, 74),
    (152, 78, 163),
    (255, 127, 0),
    (166, 86, 40),
    (247, 129, 191),
    (23, 190, 207),
    (188, 189, 34),
    (100, 100, 100),
]


def default_color(name: str, index: int) -> tuple[int, int, int]:
    """A stable colour for a class name (known names first, else the palette by index)."""
    return DEFAULT_COLORS.get(name.lower(), _PALETTE[index % len(_PALETTE)])


@dataclass(frozen=True)
class ClassTable:
    """The K trainable image classes, in id order (ids 1..K; 0 is background)."""

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.colors):
            raise ValueError("ClassTable: names and colors differ in length")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"ClassTable: duplicate class names in {self.names}")
        if UNKNOWN in self.names:
            raise ValueError(f"ClassTable: '{UNKNOWN}' is the abstain class, not a trainable one")

    @classmethod
    def from_names(cls, names: Iterable[str]) -> ClassTable:
        names = tuple(names)
        return cls(names, tuple(default_color(n, i) for i, n in enumerate(names)))

    @property
    def n_classes(self) -> int:
        return len(self.names)

    def id_of(self, name: str) -> int:
        """Class id (1..K) of a name; ``IGNORE_CLASS`` for ``unknown`` or any unlisted name."""
        try:
            return self.names.index(name) + 1
        except ValueError:
            return IGNORE_CLASS

    def ids_of(self, names: Iterable[str]) -> list[int]:
        lookup = {n: i + 1 for i, n in enumerate(self.names)}
        return [lookup.get(n, IGNORE_CLASS) for n in names]

    def name_of(self, class_id: int) -> str:
        if 1 <= class_id <= len(self.names):
            return self.names[class_id - 1]
        return UNKNOWN

    def color_of(self, name: str) -> tuple[int, int, int]:
        if name in self.names:
            return self.colors[self.names.index(name)]
        return DEFAULT_COLORS[UNKNOWN]

    def to_dict(self) -> list[dict]:
        return [{"name": n, "color": list(c)} for n, c in zip(self.names, self.colors, strict=True)]

    @classmethod
    def from_dict(cls, items: list[Mapping]) -> ClassTable:
        return cls(
            tuple(str(i["name"]) for i in items),
            tuple(tuple(int(v) for v in i["color"]) for i in items),  # type: ignore[misc]
        )


@dataclass
class Taxonomy:
    """Fine expression type -> image class. Types not in ``mapping`` go to ``unknown``."""

    classes: ClassTable
    mapping: dict[str, str] = field(default_factory=dict)
    notes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = {
            t: c for t, c in self.mapping.items() if c != UNKNOWN and c not in self.classes.names
        }
        if bad:
            raise ValueError(
                f"Taxonomy maps types to classes that are not in its class table: {bad}"
            )

    def image_class(self, cell_type: str) -> str:
        return self.mapping.get(cell_type, UNKNOWN)

    def map_types(self, cell_types: Iterable[str]) -> list[str]:
        return [self.mapping.get(t, UNKNOWN) for t in cell_types]

    def to_yaml(self, path: str | Path) -> None:
        doc = {
            "classes": self.classes.to_dict(),
            "unknown": UNKNOWN,
            "mapping": dict(sorted(self.mapping.items())),
        }
        if self.notes:
            doc["notes"] = self.notes
        Path(path).write_text(yaml.safe_dump(doc, sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> Taxonomy:
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read taxonomy YAML ({exc})") from exc
        if not isinstance(doc, dict) or "classes" not in doc or "mapping" not in doc:
            raise ValueError(f"{path}: a taxonomy needs 'classes' and 'mapping' keys")
        try:
            return cls(
                ClassTable.from_dict(doc["classes"]),
                {str(k): str(v) for k, v in doc["mapping"].items()},
                doc.get("notes") or {},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: invalid taxonomy ({exc})") from exc


def default_taxonomy_path() -> Path:
    """The shipped PanNuke-like taxonomy (epithelial, inflammatory, connective + unknown)."""
    return Path(__file__).parent / "data" / "taxonomy_pannuke.yaml"


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    return Taxonomy.from_yaml(path or default_taxonomy_path())

"""The package layout is a stack of layers: a module imports only from its own package or from
packages of lower layers, so no stage reaches back up the pipeline and no import cycle forms."""

from __future__ import annotations

import ast
from pathlib import Path

import wsi_stnuc

ROOT = Path(wsi_stnuc.__file__).parent

# Lower number = lower layer. Top-level shared modules are layer 0; the demo chain is last.
LAYERS = {
    "errors": 0, "formats": 0, "io_utils": 0, "stain": 0, "classes": 0, "data": 0,
    "progress": 0, "figures": 0,
    "slide": 1, "export": 1, "model": 1,
    "st": 2,
    "inference": 3,
    "evaluation": 4,
    "training": 5, "taxonomy": 5,
    "synth": 6,
    "pipeline": 7,
}  # fmt: skip


def _package_of(module: str) -> str:
    return module.split(".")[1]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "wsi_stnuc":
                found.update(f"wsi_stnuc.{a.name}" for a in node.names if a.name != "__version__")
            elif node.module.startswith("wsi_stnuc."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("wsi_stnuc."))
    return found


def _modules() -> list[Path]:
    return [p for p in ROOT.rglob("*.py") if p.name != "__init__.py" or p.parent != ROOT]


def test_every_package_has_a_layer():
    names = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in _modules()}
    assert names <= set(LAYERS), f"give these a layer: {sorted(names - set(LAYERS))}"


def test_no_import_reaches_a_higher_or_sibling_layer():
    bad = []
    for path in _modules():
        own = path.relative_to(ROOT).parts[0].removesuffix(".py")
        for module in _imports(path):
            other = _package_of(module)
            # Shared layer-0 modules may use each other; stages only use lower layers.
            upward = LAYERS[other] > LAYERS[own]
            sideways = LAYERS[other] == LAYERS[own] > 0
            if other != own and (upward or sideways):
                bad.append(f"{path.relative_to(ROOT)} -> {module}")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)

"""The package layout is the architecture: no module imports a layer above its own.

Layers are those of docs/architecture.md. A module may import its own layer
or any layer below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sustain"

LAYERS: dict[str, int] = {
    "errors": 0, "config": 0, "taxonomy": 0, "utils": 0, "artifacts": 0,
    "data": 1,
    "transforms": 2,
    "device": 3, "model": 3,
    "evaluate": 5, "report": 5, "tracking": 5, "training": 5, "deploy": 5,
    "diagnostics": 8,
    "cli": 9, "__main__": 9, "__init__": 9,
}

# The same rule inside `data`, one level down (docs/architecture.md, "Inside data"): the walk and the
# signature below decoding, the decode cache above it, the pass (`lake`) on top of its steps.
DATA_LAYERS: dict[str, int] = {
    "__init__": 0, "labels": 0, "split": 0, "manifest": 0, "demo": 0, "demo_images": 0,
    "walk": 1, "signature": 1, "folds": 1, "archive": 1, "kaggle_client": 1,
    "scan": 2, "download": 2,
    "decode_cache": 3, "image_cache": 3,
    "collect": 4, "dataset": 4,
    "summary": 5,
    "lake": 6,
}


def _layer_of(module: str) -> int:
    top = module.split(".")[0]
    if top not in LAYERS:
        raise AssertionError(f"sustain.{top} has no layer: add it to docs/architecture.md and LAYERS")
    return LAYERS[top]


def _sustain_imports(path: Path) -> list[str]:
    """Modules of the sustain package imported by a file, as dotted names relative to sustain."""
    rel_parts = path.relative_to(PACKAGE).with_suffix("").parts
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = list(rel_parts[:-1])[: len(rel_parts) - node.level]
                mod = ".".join([*base, node.module] if node.module else base)
                names = [mod] if node.module else [".".join([*base, a.name]) for a in node.names]
                found.extend(n for n in names if n)
            elif node.module and node.module.startswith("sustain"):
                found.append(node.module.removeprefix("sustain").lstrip(".") or "__init__")
        elif isinstance(node, ast.Import):
            found.extend(a.name.removeprefix("sustain.") for a in node.names if a.name.startswith("sustain."))
    return [f for f in found if f]


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_imports(path: Path) -> None:
    rel = path.relative_to(PACKAGE).with_suffix("")
    own = _layer_of(".".join(rel.parts))
    upward = [m for m in _sustain_imports(path) if _layer_of(m) > own]
    assert not upward, f"sustain/{rel} (layer {own}) imports upward: {upward}"


DATA_MODULES = sorted((PACKAGE / "data").glob("*.py"))


@pytest.mark.parametrize("path", DATA_MODULES, ids=lambda p: p.name)
def test_no_upward_imports_inside_data(path: Path) -> None:
    name = path.stem
    assert name in DATA_LAYERS, f"sustain/data/{name} has no place in DATA_LAYERS: add it there and to docs/architecture.md"
    inside = [m.split(".", 1)[1] for m in _sustain_imports(path) if m.startswith("data.")]
    upward = [m for m in inside if DATA_LAYERS[m.split(".")[0]] > DATA_LAYERS[name]]
    assert not upward, f"sustain/data/{name} (data layer {DATA_LAYERS[name]}) imports upward: {upward}"


def test_layering_check_catches_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pkg = tmp_path / "sustain"
    fake_pkg.mkdir()
    (fake_pkg / "config.py").write_text("from .training import train\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake_pkg)
    assert _sustain_imports(fake_pkg / "config.py") == ["training"]
    assert _layer_of("training") > _layer_of("config")

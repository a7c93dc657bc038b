"""The package layout is the architecture (docs/architecture.md).

- The rooms (subpackages) and the base modules have an order; nothing imports a room above its own.
- Inside each room, its modules have an order too.
- A module outside a room imports only what the room's `__init__` offers (`_OFFERS`).
- No circles, benchmarks included: no benchmark imports another, only the harness (`benchmarks.HARNESS`,
  whose modules import only those before them).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sustain"

LAYERS: dict[str, int] = {
    "errors": 0, "config": 0, "taxonomy": 0, "utils": 0, "artifacts": 0,
    "data": 1,
    "transforms": 2,
    "device": 3, "model": 3,
    "evaluate": 4,
    "report": 5, "tracking": 5,
    "training": 6,
    "deploy": 7,
    "diagnostics": 8,
    "cli": 9, "__main__": 9, "__init__": 9,
}

# Inside each room, bottom to top (docs/architecture.md, "Inside the rooms").
INNER: dict[str, dict[str, int]] = {
    "data": {
        "__init__": 0, "labels": 0, "split": 0, "manifest": 0, "demo": 0, "demo_images": 0,
        "walk": 1, "signature": 1, "folds": 1, "archive": 1, "kaggle_client": 1,
        "scan": 2, "download": 2,
        "decode_cache": 3, "image_cache": 3,
        "collect": 4, "dataset": 4,
        "summary": 5,
        "lake": 6,
    },
    "evaluate": {
        "__init__": 0, "metrics": 0, "trends": 0, "label_issues": 0, "shift": 0, "predictions": 0, "labelled": 0,
        "compare": 0, "selective": 0,
        "gallery": 1, "calibration": 1,
        "reports": 2, "crossval": 2,
    },
    "report": {"__init__": 0, "paths": 0, "plots": 0, "glance": 0, "data_tables": 0, "confusion_html": 0,
               "gallery_html": 0, "html": 1, "calibration_html": 2, "writer": 3, "compare_page": 2, "crossval_page": 2},
    "tracking": {"__init__": 0, "common": 0, "tensorboard_backend": 1, "mlflow_backend": 1, "tracker": 2, "crossval_parent": 2},
    "training": {
        "__init__": 0, "rng": 0, "losses": 0, "optim": 0, "precision": 0, "guards": 0, "interrupts": 0,
        "checkpoints": 0,
        "sanity": 1, "cpu_plan": 1, "loop_state": 1, "progress": 1, "distributed": 1,
        "console": 2, "hooks": 2, "loaders": 2,
        "trainer": 3,
        "resume": 4, "saving": 4, "step": 4, "setup": 4, "finish": 4,
        "loop": 5,
        "engine": 6,
        "crossval": 7,
    },
    "deploy": {"__init__": 0, "loading": 0, "export_files": 0, "serve_input": 0, "serve_page": 0,
               "inference": 1, "model_card": 1, "scoring": 1, "export": 2, "serve_model": 2, "serve": 3},
    "diagnostics": {
        "__init__": 0, "core": 0,
        "environment": 1, "accelerator": 1, "data_checks": 1,
        "model_checks": 2,
        "doctor": 3,
    },
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


ROOM_MODULES = sorted(p for room in INNER for p in (PACKAGE / room).glob("*.py"))


@pytest.mark.parametrize("path", ROOM_MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_imports_inside_a_room(path: Path) -> None:
    room, name = path.parent.name, path.stem
    order = INNER[room]
    assert name in order, f"sustain/{room}/{name} has no place in INNER[{room!r}]: add it there and to docs/architecture.md"
    inside = [m.split(".")[1] for m in _sustain_imports(path) if m.startswith(f"{room}.")]
    upward = [m for m in inside if order[m] > order[name]]
    assert not upward, f"sustain/{room}/{name} (level {order[name]} of {room}) imports upward: {upward}"


def _room_imports(path: Path) -> list[tuple[str, str, list[str]]]:
    """(room, module inside it or "", names) for each import of another room's code by `path`."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    own = rel[0] if len(rel) > 1 else None
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom) or not (node.level or (node.module or "").startswith("sustain.")):
            continue
        if node.level:
            base = list(rel[:-1])[: len(rel) - node.level]
            mod = ".".join([*base, node.module] if node.module else base)
        else:
            mod = node.module.removeprefix("sustain.")
        room, _, inner = mod.partition(".")
        if room in INNER and room != own:
            found.append((room, inner, [a.name for a in node.names]))
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_other_rooms_import_only_what_a_room_offers(path: Path) -> None:
    for room, inner, names in _room_imports(path):
        assert not inner, (f"{path.relative_to(PACKAGE)} imports sustain.{room}.{inner}: import from "
                           f"sustain.{room} and add the names to its _OFFERS")
        offers = importlib.import_module(f"sustain.{room}")._OFFERS
        missing = [n for n in names if n not in offers]
        assert not missing, f"{path.relative_to(PACKAGE)} imports {missing} that sustain.{room} does not offer"


@pytest.mark.parametrize("room", sorted(INNER))
def test_every_offered_name_exists(room: str) -> None:
    package = importlib.import_module(f"sustain.{room}")
    assert package.__all__ == sorted(package._OFFERS)
    for name in package._OFFERS:
        assert getattr(package, name) is not None


def _benchmark_imports(path: Path) -> set[str]:
    """The modules of benchmarks/ (by stem) that the file at `path` imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = "benchmarks." + (node.module or "") if node.level else node.module or ""
            names |= {module} | {f"{module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    stems = {n.split(".")[1] for n in names if n.startswith("benchmarks.")}
    return {s for s in stems if (path.parent / f"{s}.py").is_file()}


def test_no_benchmark_imports_another_and_the_harness_has_no_circle() -> None:
    from benchmarks import HARNESS

    bench = ROOT / "benchmarks"
    for path in sorted(bench.glob("*.py")):
        if path.stem in {"__init__", "__main__"}:  # __main__ runs the benchmarks: it names them all
            continue
        imported = _benchmark_imports(path) - {path.stem}
        allowed = set(HARNESS[:HARNESS.index(path.stem)]) if path.stem in HARNESS else set(HARNESS)
        assert imported <= allowed, (f"benchmarks/{path.name} imports {sorted(imported - allowed)}: a benchmark "
                                     f"imports only the harness {HARNESS}, a harness module only those before it")


def test_benchmark_import_check_sees_every_import_form(tmp_path: Path) -> None:
    for stem in ("common", "inputs", "bench_a", "bench_b", "bench_c"):
        (tmp_path / f"{stem}.py").write_text("")
    (tmp_path / "bench_a.py").write_text("from benchmarks.bench_b import x\nfrom benchmarks import bench_c, HARNESS\n"
                                         "import benchmarks.inputs\nfrom .common import ROOT\n")
    assert _benchmark_imports(tmp_path / "bench_a.py") == {"bench_b", "bench_c", "inputs", "common"}


def test_layering_check_catches_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pkg = tmp_path / "sustain"
    fake_pkg.mkdir()
    (fake_pkg / "config.py").write_text("from .training import train\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake_pkg)
    assert _sustain_imports(fake_pkg / "config.py") == ["training"]
    assert _layer_of("training") > _layer_of("config")

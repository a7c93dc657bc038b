"""Sustainability_AI_Model_Training.ipynb: stored clean, shaped as SPEC §9 says, and runs headless.

The run uses the notebook's own parameters (SUSTAIN_NB_* environment
variables, read in its parameters cell), so the test never edits it: the demo
config on a small demo lake, a 32 px model, one epoch, and the optional
reproducibility check switched on. The kernel is this interpreter, through a
kernelspec written to a temporary JUPYTER_PATH.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "Sustainability_AI_Model_Training.ipynb"
GUIDE = REPO / "docs" / "notebook.md"
SECTIONS = [
    "1. Setup",
    "2. Environment check",
    "3. Configuration",
    "4. Data ingestion",
    "5. Training",
    "6. Results",
    "7. Inference",
    "8. Reproducibility check (optional)",
    "9. Cross-validation (optional)",
]
KERNEL = "sustain-notebook-test"


def load() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def headings(nb: nbformat.NotebookNode) -> list[str]:
    return [m.group(1).strip() for c in nb.cells if c.cell_type == "markdown"
            for m in re.finditer(r"^## (.+)$", c.source, re.M)]


# --------------------------------------------------------------------------- as stored


def test_notebook_is_stored_without_outputs() -> None:
    nb = load()
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"cells {dirty} hold outputs: clear them before committing (Kernel → Restart & Clear Output)"


def test_sections_are_those_of_the_spec_in_order() -> None:
    assert headings(load()) == SECTIONS


def test_cells_only_call_the_package() -> None:
    """No function or class is defined in the notebook (DataLoader workers on macOS cannot pickle them)."""
    for cell in code_cells(load()):
        source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("%"))
        tree = ast.parse(source)
        defined = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                                                ast.Lambda))]
        assert not defined, f"cell {cell.get('id')} defines {[type(n).__name__ for n in defined]}"
    setup = code_cells(load())[0].source
    assert setup.index("PYTORCH_ENABLE_MPS_FALLBACK") < setup.index("import sustain")


def test_config_switch_is_one_line_and_parameters_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parameters cell, run as the notebook runs it: the demo by default, the environment's
    values when set, and the real run after uncommenting exactly one line."""
    from sustain.config import load_config

    params = [c for c in code_cells(load()) if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    source = params[0].source

    def run(cell: str) -> dict:
        namespace: dict = {}
        exec("import json, os\n" + cell, namespace)  # the notebook's own cell; setup imports json and os
        return namespace

    for var in ("SUSTAIN_NB_CONFIG", "SUSTAIN_NB_OVERRIDES", "SUSTAIN_NB_OUTPUT", "SUSTAIN_NB_REPRO",
                "SUSTAIN_NB_CROSSVAL"):
        monkeypatch.delenv(var, raising=False)
    default = run(source)
    assert (default["CONFIG"], default["OVERRIDES"], default["OUTPUT_DIR"], default["RUN_REPRODUCIBILITY_CHECK"],
            default["RUN_CROSSVAL"]) == ("configs/demo.yaml", [], None, False, False)

    switched = re.sub(r"^# (CONFIG = .*)$", r"\1", source, count=1, flags=re.M)
    changed = [a for a, b in zip(source.splitlines(), switched.splitlines(), strict=True) if a != b]
    assert len(changed) == 1
    real = run(switched)["CONFIG"]
    assert real != "configs/demo.yaml" and load_config(REPO / real).model.name.startswith("eva02")

    monkeypatch.setenv("SUSTAIN_NB_CONFIG", "other.yaml")
    monkeypatch.setenv("SUSTAIN_NB_OVERRIDES", '["train.epochs=1"]')
    monkeypatch.setenv("SUSTAIN_NB_OUTPUT", "/tmp/out")
    monkeypatch.setenv("SUSTAIN_NB_REPRO", "1")
    monkeypatch.setenv("SUSTAIN_NB_CROSSVAL", "1")
    env = run(source)
    assert (env["CONFIG"], env["OVERRIDES"], env["OUTPUT_DIR"], env["RUN_REPRODUCIBILITY_CHECK"],
            env["RUN_CROSSVAL"]) == ("other.yaml", ["train.epochs=1"], "/tmp/out", True, True)


def test_guide_names_the_sections_that_exist() -> None:
    """The seed's instructions named cells that did not exist; the guide must name real sections."""
    guide = GUIDE.read_text(encoding="utf-8")
    assert re.findall(r"\*\*(\d\. [^*]+)\*\*", guide) == headings(load())
    assert not re.search(r"\bCell \d+", guide)  # sections, not cell numbers that drift
    assert "./fix_environment.sh" in guide and "restart the kernel" in guide.lower()


# --------------------------------------------------------------------------- executed


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec that runs this interpreter, visible only to this test."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "sustain (test)", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_on_a_tiny_config(tmp_path: Path, kernel: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    from sustain.data.demo import make_demo_lake

    lake = tmp_path / "lake"
    make_demo_lake(lake, seed=0, per_class=4)
    out = tmp_path / "run"
    monkeypatch.setenv("SUSTAIN_NB_OVERRIDES", json.dumps([
        f"data.root={lake}", "train.epochs=1", "model.input_size=32", "train.batch_size=32",
        "data.num_workers=0", "data.ingest_workers=1", "device=cpu",
    ]))
    monkeypatch.setenv("SUSTAIN_NB_OUTPUT", str(out))
    monkeypatch.setenv("SUSTAIN_NB_REPRO", "1")
    monkeypatch.delenv("SUSTAIN_NB_CONFIG", raising=False)  # the notebook's default: configs/demo.yaml

    nb = load()
    NotebookClient(nb, kernel_name=kernel, timeout=240, resources={"metadata": {"path": str(REPO)}}).execute()

    errors = [o for c in code_cells(nb) for o in c.outputs if o.output_type == "error"]
    assert not errors
    text = {c.id: "".join(o.get("text", "") for o in c.outputs if o.output_type == "stream") for c in code_cells(nb)}
    images = {c.id: sum("image/png" in o.get("data", {}) for o in c.outputs) for c in code_cells(nb)}

    assert "DIAGNOSTIC SUMMARY" in text["env"]
    assert "📊 Dataset Summary:" in text["data"]
    assert images["data-plot"] == 1  # the class distribution, inline
    assert "✓ Training completed successfully" in text["train"] and "Best epoch 1" in text["train"]
    assert images["results-plots"] == 2
    assert "Accuracy per source (val):" in text["results-tables"] and "demo_master" in text["results-tables"]
    gallery = "".join(o.get("data", {}).get("text/html", "") for c in code_cells(nb) if c.id == "results-gallery"
                      for o in c.outputs)
    assert "Suspect labels:" in text["results-gallery"] and "Top mistakes (val)" in gallery
    assert "data:image/jpeg;base64," in gallery  # the photos themselves, inline
    assert text["inference"].count("→ predicted") >= 1 and images["inference"] == 1
    assert "✓ Identical: every metric is bitwise equal" in text["repro"]
    assert "Skipped: set RUN_CROSSVAL = True" in text["crossval"]  # off by default: the run stays fast
    for artifact in ("manifest.csv", "data_summary.json", "best_model.safetensors", "best_model.json", "last.pth",
                     "metrics_history.json", "confusion_matrix.npy", "classification_report.json", "run.json",
                     "training_curves.png", "confusion_matrix.png", "report.html", "predictions_val.npz",
                     "suspect_labels.csv"):
        assert (out / artifact).is_file(), artifact
    assert (tmp_path / "run_rerun" / "metrics_history.json").is_file()

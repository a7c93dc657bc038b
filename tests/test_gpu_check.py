"""benchmarks/gpu_check.sh --cpu: the GPU check's dry run, every section on the CPU with a tiny model.

The real run needs a CUDA GPU (docs/performance.md › GPU check); this proves,
on any machine, that each section runs and that the JSON it leaves holds the
figures, the versions and the goals the GPU run will report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["env", "cuda_tests", "demo_data", "demo_train", "step", "ddp", "loader"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--cpu", str(out)], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=480)
    return proc, out


def test_the_dry_run_runs_every_section_and_leaves_one_json_and_one_log(dry_run) -> None:
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    doc = json.loads((out / "gpu_check.json").read_text(encoding="utf-8"))
    assert doc["ok"] is True and doc["problems"] == [] and doc["mode"] == "cpu dry run"
    assert list(doc["sections"]) == SECTIONS and all(s["rc"] == 0 for s in doc["sections"].values())
    log = (out / "gpu_check.log").read_text(encoding="utf-8")
    assert "GPU:    none (CPU dry run)" in log and "=== GPU check summary" in log


def test_the_json_records_the_versions_it_ran_with(dry_run) -> None:
    doc = json.loads((dry_run[1] / "gpu_check.json").read_text(encoding="utf-8"))
    versions = doc["env"]["versions"]
    assert versions["torch"] == torch.__version__ and versions["timm"] == timm.__version__
    assert versions["pydantic"] and doc["env"]["cpu_cores"] >= 1
    tests = doc["cuda_tests"]  # every cuda test ran, and skipped for want of a GPU
    assert tests["tests"] >= 4 and tests["failures"] == tests["errors"] == 0
    assert tests["skipped"] == (0 if torch.cuda.is_available() else tests["tests"])


def test_the_demo_trains_on_the_device_and_its_checklist_is_recorded(dry_run) -> None:
    demo = json.loads((dry_run[1] / "gpu_check.json").read_text(encoding="utf-8"))["demo"]
    assert demo["status"] == "completed" and demo["device"]["type"] == "cpu"
    assert demo["epochs_completed"] == 2 and demo["checklist_total"] == len(demo["checklist"]) >= 8
    assert {"item", "passed", "detail"} <= set(demo["checklist"][0])


def test_the_step_benchmark_compares_sustains_step_with_a_plain_one_eager_and_compiled(dry_run) -> None:
    step = json.loads((dry_run[1] / "gpu_check.json").read_text(encoding="utf-8"))["step"]
    assert step["model"] == "test_vit" and step["precision"] == "bf16 autocast"
    rows = {(r["step"], r["batch"], r["compile"]): r for r in step["rows"]}
    for key in [(kind, b, False) for kind in ("sustain", "plain") for b in (4, 8)] + [("sustain", 8, True),
                                                                                     ("plain", 8, True)]:
        assert rows[key]["images_per_s"] > 0 and rows[key]["gflops_per_image"] > 0, key
        assert rows[key]["mfu"] is None and rows[key]["skipped_steps"] == 0  # no bf16 peak for a CPU
    ratio = rows[("ratio sustain/plain", 8, False)]["ratio"]
    assert ratio == pytest.approx(rows[("sustain", 8, False)]["images_per_s"] / rows[("plain", 8, False)]["images_per_s"],
                                  rel=0.01)


def test_torchrun_and_the_loader_sections_report_their_figures(dry_run) -> None:
    doc = json.loads((dry_run[1] / "gpu_check.json").read_text(encoding="utf-8"))
    assert doc["ddp"]["ok"] is True and doc["ddp"]["backend"] == "gloo" and doc["ddp"]["world_size"] == 1
    loader = {r["images"]: r for r in doc["loader"]["rows"]}
    assert set(loader) == {"256px", "camera_4032x3024"}
    assert all(r["images_per_s"] > 0 and r["failed"] == 0 for r in loader.values())
    goals = doc["goals"]  # figures recorded, judged only on a GPU
    assert goals["step_ratio"]["lowest"] > 0 and goals["loader_keeps_up_256px"]["loader_images_per_s"] > 0
    assert [g["met"] for g in goals.values()] == [None, None, None]

"""`sustain compare`: real runs side by side, and the seed's reproducibility verdict."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from engine_helpers import (
    make_tiny_lake,
    one_thread,  # noqa: F401  (autouse fixture)
    tiny_config_dict,
    write_yaml,
)

from sustain.evaluate.compare import compare_runs, exit_code, format_comparison, reproducibility


def _run(name: str, **history) -> dict:
    """A loaded run (`load_run`'s shape) with a 3-epoch history and a final val evaluation."""
    base = {"epoch": [1, 2, 3], "train_loss": [2.0, 1.5, 1.2], "val_acc": [0.40, 0.55, 0.61],
            "health": ["healthy"] * 3, "epoch_seconds": [3.0, 3.1, 2.9], "per_class_f1": [[0.1, 0.2]] * 3}
    config = {"seed": 42, "output_dir": f"/runs/{name}", "train": {"lr": 0.002},
              "tracking": {"tensorboard": True, "mlflow": {"enabled": False}}, "data": {"num_workers": 0}}
    return {"name": name, "run": {"config": config, "manifest_hash": "abc", "versions": {"torch": "2.1"}},
            "history": {**base, **history}, "val": {"accuracy": 0.61, "macro_f1": 0.5}, "test": None}


def test_reproducibility_verdicts() -> None:
    first = _run("a")
    assert reproducibility(first, _run("b", epoch_seconds=[9.0, 9.0, 9.0]))["verdict"] == "identical"
    within = reproducibility(first, _run("b", train_loss=[2.0, 1.5, 1.2 + 1e-8]))
    assert within["verdict"] == "within"  # 1e-8 off is not identical, and says which value and by how much
    assert "train_loss at epoch 3: 1.2 vs 1.20000001 (Δ +1e-08)" in within["detail"]
    drifted = reproducibility(first, _run("b", val_acc=[0.40, 0.50, 0.61], train_loss=[2.0, 1.5, 1.3]))
    assert drifted["verdict"] == "not"  # the first epoch and metric beyond ±2%, not the largest
    assert "val_acc at epoch 2: 0.55 vs 0.5" in drifted["detail"]
    short = reproducibility(first, _run("b", epoch=[1, 2], val_acc=[0.40, 0.55]))  # early stopping differed
    assert short["verdict"] == "not" and "trained 3 and 2 epochs: epoch 3" in short["detail"]
    final = _run("b")
    final["val"] = {"accuracy": 0.60, "macro_f1": 0.5}
    assert "final val accuracy at the final evaluation: 0.61 vs 0.6" in reproducibility(first, final)["detail"]
    assert reproducibility(first, _run("b", epoch=[]))["verdict"] == "not"


def test_tracking_and_the_output_folder_do_not_count_as_differences() -> None:
    a, b = _run("a"), _run("b")
    b["run"]["config"]["tracking"]["mlflow"]["enabled"] = True
    b["run"]["config"]["data"]["num_workers"] = 4  # the data order does not depend on the worker count
    result = compare_runs([a, b])
    assert result["config_differences"] == {} and result["reproducibility"]["verdict"] == "identical"
    assert set(result["neutral_differences"]) == {"output_dir", "tracking.mlflow.enabled", "data.num_workers"}
    assert exit_code(result) == 0
    b["run"]["versions"]["torch"] = "2.2"  # a library version changes results: no verdict
    result = compare_runs([a, b])
    assert list(result["config_differences"]) == ["versions.torch"] and result["reproducibility"] is None
    assert "No reproducibility verdict: the runs differ in what changes results (versions.torch)" in \
        format_comparison(result)
    c = _run("c", val_acc=[0.40, 0.50, 0.61])
    assert exit_code(compare_runs([a, c])) == 1  # not reproduced: distinct for scripts


def test_a_folder_that_is_not_a_run_is_exit_2(tmp_path: Path, run_cli) -> None:
    (tmp_path / "a").mkdir()
    result = run_cli("compare", tmp_path / "a", tmp_path / "a")
    assert result.code == 2 and "has no metrics_history.json" in result.out + result.err


@pytest.mark.slow
def test_compare_reruns_and_a_changed_learning_rate(tmp_path: Path, run_cli) -> None:
    lake = make_tiny_lake(tmp_path / "lake")
    folders = {}
    for name, lr, mlflow in (("a", 2e-3, False), ("rerun", 2e-3, True), ("lr", 1e-3, False)):
        raw = tiny_config_dict(lake, tmp_path / name, train={"lr": lr, "epochs": 1},
                               tracking={"tensorboard": False, "mlflow": {"enabled": mlflow}})
        assert run_cli("train", "--config", write_yaml(tmp_path / f"{name}.yaml", raw)).code == 0
        folders[name] = tmp_path / name

    html = tmp_path / "cmp.html"
    two = run_cli("compare", folders["a"], folders["rerun"], "--html", html)
    assert two.code == 0, two.out + two.err
    assert "✓ Identical: every metric is bitwise equal" in two.out  # MLflow on in one run only: no difference
    assert "config:" not in two.out and "the settings that change results are the same" in two.out
    assert "without effect on results: output_dir, tracking.mlflow.enabled" in two.out
    assert re.search(r"^test F1 red\s+\d\.\d{3}\s+\+0\.000$", two.out, re.M)
    page = html.read_text(encoding="utf-8")
    png = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(png).startswith(b"\x89PNG") and "<script" not in page and "http://" not in page
    assert page.index("Identical") < page.index("<table")  # the verdict first
    assert str(tmp_path) not in page and str(tmp_path.parent) not in page  # portable: run names only

    for shared in ("report.html", "suspect_labels.csv", "classification_report.json", "test_classification_report.json"):
        text = (folders["a"] / shared).read_text(encoding="utf-8")  # a real run's files can be sent on
        assert str(tmp_path) not in text and str(tmp_path.resolve()) not in text, shared
    local = json.loads((folders["a"] / "run.json").read_text(encoding="utf-8"))["local_paths"]
    assert local == {"run_dir": str(folders["a"].resolve()), "data_root": str(lake.resolve()),
                     "sources": {"tiny": str((lake / "tiny").resolve())}}  # the one place that keeps them

    three = run_cli("compare", folders["a"], folders["rerun"], folders["lr"])
    assert three.code == 0
    assert re.search(r"^config: train\.lr\s+0\.002\s+0\.002\s+0\.001$", three.out, re.M)
    assert "Identical" not in three.out and "Reproduced" not in three.out  # the verdict is for two runs
    for row in ("best epoch", "val acc", "val macro-F1", "test acc", "test macro-F1", "train time (s)"):
        assert re.search(rf"^{re.escape(row)}\s", three.out, re.M), row

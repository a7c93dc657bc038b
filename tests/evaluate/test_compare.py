"""`sustain compare`: real runs side by side, and the seed's reproducibility verdict."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from engine_helpers import (
    make_tiny_lake,
    one_thread,  # noqa: F401  (autouse fixture)
    tiny_config_dict,
    write_yaml,
)

from sustain.evaluate.compare import reproducibility


def test_reproducibility_verdicts() -> None:
    first = {"epoch": [1, 2, 3], "val_acc": [0.40, 0.55, 0.61], "epoch_seconds": [3.0, 3.1, 2.9]}
    assert reproducibility(first, {**first, "epoch_seconds": [9.0, 9.0, 9.0]})["verdict"] == "identical"
    assert reproducibility(first, {**first, "val_acc": [0.41, 0.54, 0.625]})["verdict"] == "within"
    drifted = reproducibility(first, {**first, "val_acc": [0.40, 0.50, 0.61]})
    assert drifted["verdict"] == "not" and "5.00%" in drifted["detail"]
    assert reproducibility(first, {"val_acc": [0.40]})["verdict"] == "not"  # early stopping differed
    assert reproducibility(first, {})["verdict"] == "not"


def test_a_folder_that_is_not_a_run_is_exit_2(tmp_path: Path, run_cli) -> None:
    (tmp_path / "a").mkdir()
    result = run_cli("compare", tmp_path / "a", tmp_path / "a")
    assert result.code == 2 and "has no metrics_history.json" in result.out + result.err


@pytest.mark.slow
def test_compare_reruns_and_a_changed_learning_rate(tmp_path: Path, run_cli) -> None:
    lake = make_tiny_lake(tmp_path / "lake")
    folders = {}
    for name, lr in (("a", 2e-3), ("rerun", 2e-3), ("lr", 1e-3)):
        raw = tiny_config_dict(lake, tmp_path / name, train={"lr": lr, "epochs": 1}, tracking={"tensorboard": False})
        assert run_cli("train", "--config", write_yaml(tmp_path / f"{name}.yaml", raw)).code == 0
        folders[name] = tmp_path / name

    html = tmp_path / "cmp.html"
    two = run_cli("compare", folders["a"], folders["rerun"], "--html", html)
    assert two.code == 0, two.out + two.err
    assert "✓ Reproducible: identical" in two.out
    assert "config:" not in two.out and "the configs are the same apart from the output folder" in two.out
    assert re.search(r"^test F1 red\s+\d\.\d{3}\s+\+0\.000$", two.out, re.M)
    page = html.read_text(encoding="utf-8")
    png = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(png).startswith(b"\x89PNG") and "<script" not in page and "http" not in page

    three = run_cli("compare", folders["a"], folders["rerun"], folders["lr"])
    assert three.code == 0
    assert re.search(r"^config: train\.lr\s+0\.002\s+0\.002\s+0\.001$", three.out, re.M)
    assert "Reproducible" not in three.out  # the verdict is for exactly two runs of one config
    for row in ("best epoch", "val acc", "val macro-F1", "test acc", "test macro-F1", "train time (s)"):
        assert re.search(rf"^{re.escape(row)}\s", three.out, re.M), row

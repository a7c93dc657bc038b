"""`sustain crossval` end to end on tiny lakes: real folds, real training runs, real processes."""

from __future__ import annotations

import csv
import signal
from pathlib import Path

import numpy as np
import pytest
from crossval_helpers import oof_by_path, two_source_config, two_source_lake
from engine_helpers import one_thread, read_json, run_sustain, write_yaml  # noqa: F401  (autouse fixture)

pytestmark = pytest.mark.slow

KFOLD = Path("crossval") / "kfold"


@pytest.fixture(scope="module")
def lake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return two_source_lake(tmp_path_factory.mktemp("cv_lake"))


@pytest.fixture(scope="module")
def reference(lake_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-fold crossval in one process (2 epochs each): what the others must equal."""
    import torch

    from sustain.config import config_from_dict
    from sustain.training.crossval import CrossvalOptions, run_crossval

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference")
    run_crossval(config_from_dict(two_source_config(lake_root, out, train={"epochs": 2})), CrossvalOptions(folds=2))
    return out / KFOLD


def _same_results(got: Path, expected: Path) -> None:
    a, b = read_json(got / "crossval.json"), read_json(expected / "crossval.json")
    strip = ("run_dir",)
    assert [{k: v for k, v in f.items() if k not in strip} for f in a["folds"]] == \
           [{k: v for k, v in f.items() if k not in strip} for f in b["folds"]]
    assert a["summary"] == b["summary"] and a["oof"] == b["oof"]
    oof_a, oof_b = oof_by_path(got / "predictions_oof.npz"), oof_by_path(expected / "predictions_oof.npz")
    assert oof_a.keys() == oof_b.keys()
    for path, (fold, probs) in oof_a.items():
        assert fold == oof_b[path][0]
        np.testing.assert_allclose(probs, oof_b[path][1], atol=1e-6)


def test_kfold_writes_the_summary_and_predicts_every_image_once(lake_root: Path, tmp_path: Path, run_cli) -> None:
    raw = two_source_config(lake_root, tmp_path / "out", train={"epochs": 1})
    raw["tracking"]["mlflow"] = {"enabled": True}
    result = run_cli("crossval", "--config", write_yaml(tmp_path / "cv.yaml", raw), "--folds", "2")
    assert result.code == 0, result.output
    assert "Crossval kfold: 2 of 2 folds to train, each a full training run (up to 1 epochs)" in result.output
    folder = tmp_path / "out" / KFOLD

    with (folder / "folds.csv").open(newline="", encoding="utf-8") as fh:
        folds = list(csv.DictReader(fh))
    manifest = read_json(folder / "fold_0" / "data_summary.json")
    assert len(folds) == manifest["total_images"] == 84
    assert list(folds[0]) == ["path", "source", "group", "fold", "label"]
    oof = oof_by_path(folder / "predictions_oof.npz")
    assert len(oof) == 84 and {p: str(f) for p, (f, _) in oof.items()} == {r["path"]: r["fold"] for r in folds}

    record = read_json(folder / "crossval.json")
    assert record["scheme"] == "kfold" and [f["name"] for f in record["folds"]] == ["fold_0", "fold_1"]
    for fold in record["folds"]:
        assert fold["n_train"] + fold["n_val"] + fold["n_test"] == 84 and fold["n_test"] == fold["n_fine"]
        assert 0 <= fold["accuracy"] <= 1 and fold["accuracy_ci95"][0] <= fold["accuracy"] <= fold["accuracy_ci95"][1]
        assert (folder / fold["run_dir"] / "best_model.safetensors").is_file()
        assert (folder / fold["run_dir"] / "report.html").is_file()  # each fold is an ordinary run
    acc = record["summary"]["accuracy"]
    assert acc["n_folds"] == 2 and acc["mean"] == pytest.approx(np.mean([f["accuracy"] for f in record["folds"]]))
    assert record["oof"]["n_fine"] == 84
    header = (folder / "label_issues.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "path,source,given,suggested,label_quality,rank"
    page = (folder / "report.html").read_text(encoding="utf-8").replace("<wbr>", "")  # names may break at "_"
    assert "fold_0" in page and "Accuracy per fold" in page and "Label issues" in page

    # tracking: one parent run, each fold a child run in the same store
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sustain").experiment_id])
    parent = next(r for r in runs if r.info.run_name == "kfold")
    children = sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    assert children == ["fold_0", "fold_1"] and len(runs) == 3
    assert parent.data.metrics["crossval_accuracy_mean"] == pytest.approx(acc["mean"])


def test_a_shifted_source_scores_lower_out_of_source_than_in_domain(tmp_path: Path, run_cli) -> None:
    root = two_source_lake(tmp_path / "lake", per_class=12, tint=True)  # `other`: the same classes, tinted orange
    config = write_yaml(tmp_path / "cv.yaml", two_source_config(root, tmp_path / "out",
                                                                train={"epochs": 3}))
    assert run_cli("crossval", "--config", config, "--folds", "2").code == 0  # the in-domain figures
    result = run_cli("crossval", "--config", config, "--by", "source")
    assert result.code == 0, result.output
    record = read_json(tmp_path / "out" / "crossval" / "source" / "crossval.json")
    assert record["scheme"] == "source" and [f["held_out"] for f in record["folds"]] == ["tiny", "other"]
    assert all(f["near_duplicates_removed"] == 12 for f in record["folds"])
    other = next(s for s in record["sources"] if s["source"] == "other")
    assert other["in_domain_from"] == "kfold out-of-fold predictions" and other["n_in_domain"] == 84
    assert other["out_of_source_accuracy"] < other["in_domain_accuracy"]
    assert other["shift_gap"] == pytest.approx(other["in_domain_accuracy"] - other["out_of_source_accuracy"], abs=1e-5)
    assert "Shift gap" in (tmp_path / "out" / "crossval" / "source" / "report.html").read_text(encoding="utf-8")


def test_a_killed_crossval_resumed_ends_like_an_uninterrupted_one(lake_root: Path, reference: Path,
                                                                  tmp_path: Path, run_cli) -> None:
    raw = two_source_config(lake_root, tmp_path / "out", train={"epochs": 2})
    crash = write_yaml(tmp_path / "crash.yaml", {**raw, "guards": {"debug_kill_after_epoch": 1}})
    crashed = run_sustain(["crossval", "--config", str(crash), "--folds", "2"])  # killed after fold_0's epoch 1
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    config = write_yaml(tmp_path / "cv.yaml", raw)
    resumed = run_cli("crossval", "--config", config, "--folds", "2", "--resume", "auto")
    assert resumed.code == 0, resumed.output
    fold_0 = resumed.output.split("fold_1")[0]
    assert "Resumed from" in fold_0 and "Epoch 1/2" not in fold_0
    _same_results(tmp_path / "out" / KFOLD, reference)

    again = run_cli("crossval", "--config", config, "--folds", "2", "--resume", "auto")
    assert again.code == 0 and again.output.count("already finished") == 2 and "Epoch 1/2" not in again.output


def test_folds_run_as_separate_processes_give_the_same_summary(lake_root: Path, reference: Path,
                                                                tmp_path: Path, run_cli) -> None:
    config = str(write_yaml(tmp_path / "cv.yaml", two_source_config(lake_root, tmp_path / "out",
                                                                     train={"epochs": 2})))
    folder = tmp_path / "out" / KFOLD
    one = run_sustain(["crossval", "--config", config, "--folds", "2", "--fold", "1"])
    assert one.returncode == 0, one.stdout + one.stderr
    assert "1 of 2 folds finished; not yet: ['fold_0']" in one.stdout and not (folder / "crossval.json").exists()
    early = run_cli("crossval", "--config", config, "--folds", "2", "--summarize")
    assert early.code == 2 and "not yet: ['fold_0']" in early.output
    zero = run_sustain(["crossval", "--config", config, "--folds", "2", "--fold", "0"])
    assert zero.returncode == 0, zero.stdout + zero.stderr
    _same_results(folder, reference)  # the last fold to finish built the summary
    (folder / "crossval.json").unlink()
    summary = run_cli("crossval", "--config", config, "--folds", "2", "--summarize")
    assert summary.code == 0 and "Epoch" not in summary.output
    _same_results(folder, reference)


@pytest.mark.slow  # two torchrun processes, two folds of one epoch
def test_under_torchrun_each_fold_trains_with_ddp_and_every_image_is_predicted_once(lake_root: Path,
                                                                                    tmp_path: Path) -> None:
    import os
    import subprocess

    from engine_helpers import PYTHON, REPO_ROOT

    raw = two_source_config(lake_root, tmp_path / "out", train={"epochs": 1})
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                           "sustain", "crossval", "--config", str(write_yaml(tmp_path / "cv.yaml", raw)), "--folds", "2"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = tmp_path / "out" / KFOLD
    for fold in read_json(folder / "crossval.json")["folds"]:
        assert read_json(folder / fold["run_dir"] / "run.json")["device"]["world_size"] == 2  # DDP, as usual
    assert len(oof_by_path(folder / "predictions_oof.npz")) == 84  # every image once, not once per rank

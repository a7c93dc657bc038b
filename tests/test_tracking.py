"""Experiment tracking, read back the way a user reads it: TensorBoard's event reader and MlflowClient."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest
import torch
from engine_helpers import (
    make_tiny_lake,
    one_thread,  # noqa: F401  (autouse fixture)
    read_json,
    run_sustain,
    tiny_config_dict,
    write_yaml,
)

from sustain.config import config_from_dict
from sustain.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lake(tmp_path_factory.mktemp("tiny_lake"))


def tensorboard_events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.mark.slow
def test_a_killed_and_resumed_run_is_one_mlflow_run_with_every_epoch(tiny_lake: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    raw = tiny_config_dict(tiny_lake, tmp_path / "runs" / "tiny", train={"epochs": 3},
                           tracking={"mlflow": {"enabled": True}, "log_every_n_steps": 2})
    crash = write_yaml(tmp_path / "crash.yaml", {**raw, "guards": {"debug_kill_after_epoch": 1}})
    crashed = run_sustain(["train", "--config", str(crash)])
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    out = tmp_path / "runs" / "tiny"
    saved = torch.load(out / "last.pth", weights_only=True)["tracking"]
    assert saved["mlflow_run_id"] and saved["tensorboard_step"] > 0

    resumed = run_sustain(["train", "--config", str(write_yaml(tmp_path / "r.yaml", raw)), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    # MLflow: the embedded store beside the run folder, one run, every epoch, the final numbers and artifacts
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sustain")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [saved["mlflow_run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch/val_acc")] == [1, 2, 3]
    history = read_json(out / "metrics_history.json")
    assert [m.value for m in client.get_metric_history(run.info.run_id, "epoch/val_acc")] == history["val_acc"]
    assert run.data.params["train.epochs"] == "3" and run.data.params["model.name"] == "test_vit"
    assert run.data.params["data.total_images"] == "60" and run.data.params["data.class.red"] == "10"
    assert "version.torch" in run.data.params and "device" in run.data.params
    assert run.data.metrics["final.val.acc"] == pytest.approx(read_json(out / "classification_report.json")["accuracy"])
    assert "final.test.f1.red" in run.data.metrics and "checklist.completed" in run.data.metrics
    assert {"train/running_loss", "train/images_per_second", "val_f1/red"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "best_model.json", "training_curves.png", "run.json"} <= artifacts
    assert "best_model.safetensors" not in artifacts  # only on request (tracking.mlflow.log_weights)
    assert not (tmp_path / "mlruns").exists() and (tmp_path / "runs" / "mlartifacts").is_dir()

    # TensorBoard: one step axis across the resume, the epochs once each, the two images
    acc = tensorboard_events(out)
    assert [e.step for e in acc.Scalars("epoch/val_acc")] == [1, 2, 3]
    steps = [e.step for e in acc.Scalars("train/running_loss")]
    assert steps == sorted(set(steps)) and steps[0] == 2 and steps[-1] > saved["tensorboard_step"]
    assert set(acc.Tags()["images"]) == {"train/first_batch_augmented", "val/confusion_matrix"}
    assert len(acc.Images("train/first_batch_augmented")) == 1  # logged once, not again by the resume

    record = read_json(out / "run.json")["tracking"]
    assert record["mlflow"]["run_id"] == run.info.run_id and record["tensorboard"] is True
    assert record["mlflow"]["failures"] == 0 and record["mlflow"]["dropped"] == 0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_is_exit_2_naming_it_before_the_model_is_built(tiny_lake: Path,
                                                                            tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    raw = tiny_config_dict(tiny_lake, tmp_path / "out", tracking={"mlflow": {"enabled": True, "tracking_uri": uri}})
    t = time.perf_counter()
    proc = run_sustain(["train", "--config", str(write_yaml(tmp_path / "c.yaml", raw))])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    assert f"MLflow tracking server {uri} cannot be reached" in text
    assert "Creating model" not in text and not (tmp_path / "out" / "last.pth").exists()
    assert time.perf_counter() - t < 60  # seconds of checking, not MLflow's minutes of retries


def test_credentials_in_the_tracking_uri_are_refused(tmp_path: Path) -> None:
    raw = tiny_config_dict(tmp_path, tmp_path / "out",
                           tracking={"mlflow": {"enabled": True, "tracking_uri": "https://me:secret@mlflow.example"}})
    with pytest.raises(ConfigError, match=r"tracking\.mlflow\.tracking_uri.*MLFLOW_TRACKING_USERNAME"):
        config_from_dict(raw)

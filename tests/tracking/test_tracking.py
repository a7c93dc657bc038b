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
    proc = run_sustain(["train", "--config", str(write_yaml(tmp_path / "c.yaml", raw))])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    assert f"MLflow tracking server {uri} cannot be reached" in text
    assert "Creating model" not in text and not (tmp_path / "out" / "last.pth").exists()


def test_credentials_in_the_tracking_uri_are_refused(tmp_path: Path) -> None:
    raw = tiny_config_dict(tmp_path, tmp_path / "out",
                           tracking={"mlflow": {"enabled": True, "tracking_uri": "https://me:secret@mlflow.example"}})
    with pytest.raises(ConfigError, match=r"tracking\.mlflow\.tracking_uri.*MLFLOW_TRACKING_USERNAME"):
        config_from_dict(raw)


# --------------------------------------------------------------------------- a server that goes away

class FakeMlflowServer:
    """The few REST endpoints a Tracker uses, on a real socket (the MLflow server needs Flask, absent here)."""

    def __init__(self, port: int = 0) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        server = self
        self.metrics: list[dict] = []
        self.params: dict[str, str] = {}
        self.status: str | None = None

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if "experiments/get-by-name" in self.path:
                    return self.reply(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no experiment"})
                self.reply(200, {})  # /health

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                if self.path.endswith("experiments/create"):
                    return self.reply(200, {"experiment_id": "1"})
                if self.path.endswith("runs/create"):
                    return self.reply(200, {"run": {"info": {"run_id": "r1", "experiment_id": "1",
                                                             "status": "RUNNING", "lifecycle_stage": "active"},
                                                    "data": {}}})
                if self.path.endswith("runs/log-batch"):
                    server.metrics += body.get("metrics", [])
                    server.params.update({p["key"]: p["value"] for p in body.get("params", [])})
                elif self.path.endswith("runs/update"):
                    server.status = body.get("status")
                self.reply(200, {})

            def reply(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_server_that_goes_away_mid_run_is_a_warning_then_the_buffer_is_delivered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from sustain.tracking import mlflow_backend
    from sustain.tracking import tracker as tracking

    monkeypatch.setattr(mlflow_backend, "RETRY_PAUSES", (0.0,))  # retry at the next call, not after 5 s
    server = FakeMlflowServer()
    uri = f"http://127.0.0.1:{server.port}"
    cfg = config_from_dict(tiny_config_dict(tmp_path, tmp_path / "out", tracking={
        "tensorboard": False, "mlflow": {"enabled": True, "tracking_uri": uri}}))
    tracker = tracking.Tracker.create(cfg)
    tracker.start(cfg, {"mean": (0.5,) * 3, "std": (0.5,) * 3}, {"total_images": 60}, {"device": "cpu"})
    epoch = {"epoch": 1, "val_acc": 0.5, "health": "healthy", "per_class_f1": [0.5]}
    tracker.log_epoch(epoch, ["red"])
    server.stop()  # the server goes away

    t = time.perf_counter()
    tracker.log_epoch({**epoch, "epoch": 2, "val_acc": 0.6}, ["red"])  # training goes on
    assert time.perf_counter() - t < 30
    assert "MLflow at " + uri in caplog.text and "training goes on" in caplog.text
    assert tracker.record()["mlflow"]["pending"] == 1 and tracker.record()["mlflow"]["failures"] == 1

    server = FakeMlflowServer(server.port)  # back again
    tracker.log_epoch({**epoch, "epoch": 3, "val_acc": 0.7}, ["red"])
    out = tmp_path / "out"
    out.mkdir()
    record = tracker.finish(out, {"status": "completed", "epochs_completed": 3})["mlflow"]
    server.stop()
    assert [(m["step"], m["value"]) for m in server.metrics if m["key"] == "epoch/val_acc"] == [(2, 0.6), (3, 0.7)]
    assert server.status == "FINISHED"
    assert record["failures"] == 1 and record["retried_ok"] >= 2 and record["dropped"] == 0
    assert record["pending"] == 0 and record["run_id"] == "r1"

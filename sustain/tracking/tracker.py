"""The one `Tracker` a training run talks to; it computes each figure once and hands it to its backends.

A backend (`TensorBoardBackend`, `MlflowBackend`) follows the `Backend`
protocol below. The training run reaches the tracker by one route, its hooks
(`training.hooks.Hooks.attach`): `start` (config, data summary, device), `log_step`
(every `log_every_n_steps` batches), `log_epoch`, `state` (saved in `last.pth`,
so a resumed run appends to the same MLflow run and TensorBoard step),
`interrupted`, `finish` (final evaluation, checklist, artifacts) and `close`.
`create` runs before anything slow: an unreachable MLflow server is a
`UsageError`, exit 2. Under DDP only rank 0 tracks; every other rank gets a
tracker with no backends.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from .. import artifacts
from ..config import Config, TrackingConfig
from ..utils import flatten
from .common import data_params, final_metrics, finite, safe_key, versions
from .mlflow_backend import MlflowBackend
from .tensorboard_backend import TensorBoardBackend


class Backend(Protocol):
    def start(self, cfg: Config, data_config: Mapping[str, Any], params: Mapping[str, Any] | None,
              resume: Mapping[str, Any]) -> None: ...
    def batch(self, step: int, images: Any) -> None: ...
    def scalars(self, values: Mapping[str, float], step: int, send: bool = True) -> None: ...
    def finish(self, out_dir: Path, status: str, stop_reason: str | None = None) -> None: ...
    def interrupted(self, reason: str) -> None: ...
    def close(self, status: str) -> None: ...
    def state(self) -> dict[str, Any]: ...
    def record(self) -> dict[str, Any]: ...


class Tracker:
    """TensorBoard and/or MLflow for one run; with no backends every method does nothing."""

    def __init__(self, tracking: TrackingConfig | None, out_dir: Path | None) -> None:
        self.cfg = tracking
        self.backends: list[Backend] = []
        if tracking is not None and out_dir is not None:
            if tracking.tensorboard:
                self.backends.append(TensorBoardBackend(out_dir))
            if tracking.mlflow.enabled:
                self.backends.append(MlflowBackend(tracking, out_dir))
        self.step = 0
        self.closed = False

    @classmethod
    def create(cls, cfg: Config, *, is_main: bool | None = None) -> Tracker:
        """Check the server before anything slow; nothing is written yet."""
        if is_main is None:
            is_main = int(os.environ.get("RANK", "0")) == 0
        tracker = cls(cfg.tracking if is_main else None, Path(cfg.output_dir).expanduser().resolve())
        for backend in tracker.backends:
            if isinstance(backend, MlflowBackend):
                backend.check()
        return tracker

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        status = "FINISHED" if exc_type is None else "KILLED" if exc_type is KeyboardInterrupt else "FAILED"
        self.close(status)

    def start(self, cfg: Config, data_config: Mapping[str, Any], summary: Mapping[str, Any],
              system: Mapping[str, Any], resume: Mapping[str, Any] | None = None) -> None:
        """Open the event files and the MLflow run (the saved one on resume) and log the run's setup."""
        resume = dict(resume or {})
        self.step = int(resume.get("tensorboard_step", 0))
        params = None
        if any(isinstance(b, MlflowBackend) for b in self.backends) and not resume.get("mlflow_run_id"):
            params = {**flatten(cfg.to_dict()), **flatten(dict(system)),
                      **{k: str(v) for k, v in data_params(summary).items()}, **versions()}
        for backend in self.backends:
            backend.start(cfg, data_config, params, resume)

    def log_step(self, step: int, images: Any, loss_sum: Any, seen: int, t_start: float) -> None:
        """The first augmented batch as an image grid; every N steps the running loss and throughput."""
        self.step = step
        for backend in self.backends:
            backend.batch(step, images)
        n = self.cfg.log_every_n_steps if self.cfg else 0
        if not self.backends or not n or step % n or not seen:
            return
        values = {"train/running_loss": float(loss_sum) / seen,
                  "train/images_per_second": seen / max(time.perf_counter() - t_start, 1e-9)}
        self._scalars(values, step, send=False)  # MLflow sends them with the epoch's batch: one write per epoch

    def log_epoch(self, entry: Mapping[str, Any], classes: list[str]) -> None:
        """One history entry: the metrics, the LR, the health verdict (0 healthy, 1 warning, 2 critical)."""
        if not self.backends:
            return
        values = {f"epoch/{k}": v for k, v in entry.items() if k not in ("epoch", "health", "per_class_f1")}
        values["epoch/health"] = {"healthy": 0, "warning": 1, "critical": 2}.get(entry.get("health"), None)
        for c, f in zip(classes, entry.get("per_class_f1") or [], strict=False):
            values[f"val_f1/{safe_key(c)}"] = f
        self._scalars(values, int(entry["epoch"]))

    def finish(self, out_dir: Path, run: Mapping[str, Any]) -> dict[str, Any] | None:
        """Final evaluation, checklist, confusion image and artifacts; returns the counts for run.json
        (None when tracking is off)."""
        if self.cfg is None:
            self.close("FINISHED" if run.get("status") == "completed" else "FAILED")
            return None
        reports = {split: json.loads(p.read_text(encoding="utf-8")) for split, p in
                   (("val", out_dir / artifacts.VAL_REPORT), ("test", out_dir / artifacts.TEST_REPORT),
                    ("ood", out_dir / artifacts.OOD_REPORT)) if p.is_file()}  # ood: data.split.holdout_sources
        metrics = final_metrics(reports)
        metrics.update({f"checklist.{it['id']}": float(it["passed"]) for it in run.get("checklist") or []})
        self._scalars(metrics, int(run.get("epochs_completed") or 0))
        for backend in self.backends:
            backend.finish(out_dir, str(run.get("status")), run.get("stop_reason"))
        self.close("FINISHED" if run.get("status") == "completed" else "FAILED")
        return self.record()

    def interrupted(self, reason: str) -> None:
        """A stop signal ended the run after saving its position: MLflow's KILLED (the user stopped
        it, `--resume auto` continues it), tagged with the reason."""
        for backend in self.backends:
            backend.interrupted(reason)
        self.close("KILLED")

    def close(self, status: str = "FINISHED") -> None:
        if self.closed:
            return
        self.closed = True
        for backend in self.backends:
            backend.close(status)

    def state(self) -> dict[str, Any]:
        """What `last.pth` keeps so a resumed run appends to the same run and step."""
        out = {"mlflow_run_id": None, "tensorboard_step": self.step, "images_logged": False}
        for backend in self.backends:
            out.update(backend.state())
        return out

    def record(self) -> dict[str, Any]:
        """The `run.json` entry: where the run was logged, and how delivery went."""
        out: dict[str, Any] = {"tensorboard": False, "tensorboard_step": self.step,
                               "mlflow": {"enabled": False, "tracking_uri": None,
                                          "experiment": self.cfg.mlflow.experiment if self.cfg else None,
                                          "run_id": None, "pending": 0, "failures": 0, "retried_ok": 0,
                                          "dropped": 0}}
        for backend in self.backends:
            out.update(backend.record())
        return out

    def _scalars(self, values: Mapping[str, Any], step: int, send: bool = True) -> None:
        values = {k: float(v) for k, v in values.items() if finite(v)}
        for backend in self.backends:
            backend.scalars(values, step, send)

"""MLflow: one run per training run, delivered through a bounded buffer that survives a server's absence.

Tracking never breaks training: every call goes through `_flush`, which keeps
what failed in a bounded buffer and retries it with a growing pause; the
failures, the retries and anything finally dropped are counted in `run.json`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config import TrackingConfig
from .common import ARTIFACTS, WEIGHTS, check_reachable, mlflow_uri, safe_key

log = logging.getLogger("sustain.tracking")

RETRY_PAUSES = (5.0, 15.0, 60.0)  # seconds between retries after a failure (then 60 s on)
MAX_PENDING = 10_000  # logging calls kept while a server is away; the oldest metrics go first
MLFLOW_BATCH = 1000  # MLflow's per-request limit on metrics (params: 100)


class MlflowBackend:
    """Params, tags, metrics, the final status and the run's artifacts, in order, never lost silently."""

    def __init__(self, tracking: TrackingConfig, out_dir: Path) -> None:
        self.cfg, self.out_dir = tracking, out_dir
        self.uri = mlflow_uri(tracking, out_dir)
        self.client: Any = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.pending: deque[tuple[str, Any]] = deque()  # operations not yet delivered
        self.counts = {"failures": 0, "retried_ok": 0, "dropped": 0}
        self.next_try = 0.0
        self.streak = 0  # failed deliveries in a row: the retry pause grows with it
        self.closed = False

    def check(self) -> None:
        """Before anything slow: an unreachable server is a UsageError (exit 2)."""
        if urlsplit(self.uri).scheme in ("http", "https"):
            # Seconds, not MLflow's minutes of retries: our own buffer retries later.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        check_reachable(self.uri)

    def start(self, cfg: Any, data_config: Mapping[str, Any], params: Mapping[str, Any] | None,
              resume: Mapping[str, Any]) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id = resume.get("mlflow_run_id")
        if self.run_id is None and params is not None:
            self.pending.append(("params", dict(params)))
        step = int(resume.get("tensorboard_step", 0))
        parent = {"mlflow.parentRunId": self.cfg.mlflow.parent_run_id} if self.cfg.mlflow.parent_run_id else {}
        self.pending.append(("tags", {"sustain.output_dir": str(self.out_dir), **parent,
                                      **({"sustain.resumed_at_step": str(step)} if resume else {})}))
        if resume:  # an interrupted run was marked KILLED or FAILED: it runs again
            self.pending.append(("status", "RUNNING"))
        self._flush(force=True)
        if self.run_id:
            log.info("📈 MLflow: run %s in experiment %r at %s", self.run_id, self.cfg.mlflow.experiment, self.uri)

    def batch(self, step: int, images: Any) -> None:
        pass  # MLflow gets the running figures with the epoch's batch of metrics

    def scalars(self, values: Mapping[str, float], step: int, send: bool = True) -> None:
        self.pending.append(("metrics", (dict(values), step, int(time.time() * 1000))))
        self._trim()
        if send:
            self._flush()

    def finish(self, out_dir: Path, status: str, stop_reason: str | None = None) -> None:
        names = ARTIFACTS + ((WEIGHTS,) if self.cfg.mlflow.log_weights else ())
        # Overwrites an interruption's tags when a resumed run finishes: the tags say how it ended.
        self.pending.append(("tags", {"sustain.status": status, "sustain.stop_reason": stop_reason or "none"}))
        self.pending.extend(("artifact", out_dir / n) for n in names if (out_dir / n).is_file())

    def interrupted(self, reason: str) -> None:
        self.pending.append(("tags", {"sustain.status": "interrupted", "sustain.stop_reason": reason}))

    def close(self, status: str) -> None:
        if self.closed or self.client is None:
            return
        self.closed = True
        self.pending.append(("status", status))
        self._flush(force=True)
        self._drop_pending()

    def state(self) -> dict[str, Any]:
        return {"mlflow_run_id": self.run_id}

    def record(self) -> dict[str, Any]:
        return {"mlflow": {"enabled": True, "tracking_uri": self.uri, "experiment": self.cfg.mlflow.experiment,
                           "run_id": self.run_id, "pending": len(self.pending), **self.counts}}

    # ------------------------------------------------------------------ delivery

    def _flush(self, force: bool = False) -> None:
        """Deliver the pending operations in order; on failure keep them and pause retries."""
        if self.client is None or not self.pending or (not force and time.monotonic() < self.next_try):
            return
        retrying = self.streak > 0
        while self.pending:
            kind, payload = self.pending[0]
            try:
                self._deliver(kind, payload)
            except Exception as exc:  # a tracking server must never stop training: counted, warned, retried
                pause = RETRY_PAUSES[min(self.streak, len(RETRY_PAUSES) - 1)]
                self.streak += 1
                self.counts["failures"] += 1
                self.next_try = time.monotonic() + pause
                log.warning("⚠️  MLflow at %s: %s: %s; training goes on, %d item(s) kept for a retry in %.0f s",
                            self.uri, type(exc).__name__, str(exc).splitlines()[0][:200],
                            len(self.pending), pause)
                return
            self.pending.popleft()
            self.streak = 0
            self.counts["retried_ok"] += retrying

    def _deliver(self, kind: str, payload: Any) -> None:
        from mlflow.entities import Metric, Param, RunTag

        if self.run_id is None:
            self.run_id = self._open_run()
        if kind == "params":
            items = [Param(safe_key(k), v) for k, v in payload.items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i:i + 100])
        elif kind == "tags":
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in payload.items()])
        elif kind == "metrics":
            values, step, stamp = payload
            items = [Metric(safe_key(k), v, stamp, step) for k, v in values.items()]
            for i in range(0, len(items), MLFLOW_BATCH):
                self.client.log_batch(self.run_id, metrics=items[i:i + MLFLOW_BATCH])
        elif kind == "artifact":
            self.client.log_artifact(self.run_id, str(payload))
        elif kind == "status" and payload == "RUNNING":
            self.client.update_run(self.run_id, status=payload)
        elif kind == "status":
            self.client.set_terminated(self.run_id, status=payload)

    def _open_run(self) -> str:
        """The experiment (its artifacts beside an embedded store, not in the working directory) and a run."""
        name = self.cfg.mlflow.experiment
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:///"):
                location = Path(self.uri.removeprefix("sqlite:///")).parent.joinpath("mlartifacts").as_uri()
            self.experiment_id = self.client.create_experiment(name, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        return self.client.create_run(self.experiment_id, run_name=self.out_dir.name).info.run_id

    def _trim(self) -> None:
        """Keep at most MAX_PENDING operations waiting: the oldest metrics go first, counted."""
        while len(self.pending) > MAX_PENDING:
            del self.pending[next(i for i, (k, _) in enumerate(self.pending) if k == "metrics")]
            self.counts["dropped"] += 1

    def _drop_pending(self) -> None:
        if self.pending:
            self.counts["dropped"] += len(self.pending)
            log.warning("⚠️  MLflow at %s: %d item(s) could not be delivered and were dropped (see run.json)",
                        self.uri, len(self.pending))
            self.pending.clear()

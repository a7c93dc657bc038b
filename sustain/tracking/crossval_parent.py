"""The MLflow parent run of a cross-validation: each fold's run is its child (tag `mlflow.parentRunId`).

TensorBoard needs nothing of this: every fold writes its event files into its own run folder, so
`tensorboard --logdir OUTPUT/crossval/<scheme>` shows the folds side by side under one parent folder.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from ..config import Config
from ..utils import atomic_write_text
from .common import mlflow_uri
from .mlflow_backend import MlflowBackend

log = logging.getLogger("sustain.tracking")

PARENT_FILE = "mlflow_parent_run.txt"  # in the scheme folder: later folds and --resume reuse the parent


def parent_run(cfg: Config, folder: Path, scheme: str) -> tuple[str, str] | None:
    """(tracking URI, parent run id) when MLflow is on; the parent recorded in `folder` is reused."""
    if not cfg.tracking.mlflow.enabled:
        return None
    backend = MlflowBackend(cfg.tracking, folder)  # the run's name: the scheme folder's
    backend.uri = mlflow_uri(cfg.tracking, cfg.output_dir)  # the store `sustain train` of this config uses
    backend.check()  # an unreachable server is a UsageError before any fold trains
    path = folder / PARENT_FILE
    if path.is_file():
        return backend.uri, path.read_text(encoding="utf-8").strip()
    from mlflow import MlflowClient

    backend.client = MlflowClient(tracking_uri=backend.uri)
    run_id = backend._open_run()
    backend.client.set_tag(run_id, "sustain.crossval", scheme)
    atomic_write_text(path, run_id + "\n")
    log.info("📈 MLflow: crossval parent run %s; each fold is a child run", run_id)
    return backend.uri, run_id


def log_summary(parent: tuple[str, str] | None, summary: Mapping[str, Mapping[str, object]]) -> None:
    """The crossval summary as the parent run's metrics (mean, std, interval ends), and the run ended."""
    if parent is None:
        return
    from mlflow import MlflowClient

    uri, run_id = parent
    client = MlflowClient(tracking_uri=uri)
    for metric, stat in summary.items():
        for key in ("mean", "std"):
            if stat.get(key) is not None:
                client.log_metric(run_id, f"crossval_{metric}_{key}", float(stat[key]))
        if stat.get("ci95"):
            client.log_metric(run_id, f"crossval_{metric}_ci95_low", float(stat["ci95"][0]))
            client.log_metric(run_id, f"crossval_{metric}_ci95_high", float(stat["ci95"][1]))
    client.set_terminated(run_id, status="FINISHED")

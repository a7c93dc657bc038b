"""Experiment tracking: TensorBoard event files and an MLflow run for each training run.

One `Tracker` per run owns the TensorBoard `SummaryWriter` and the MLflow client.
The engine calls it at a handful of points: `create` (before anything slow: an
unreachable MLflow server is a `UsageError`, exit 2), `start` (config, data
summary, device), `log_step` (every `log_every_n_steps` batches), `log_epoch`,
`state` (saved in `last.pth`, so a resumed run appends to the same MLflow run
and TensorBoard step), `finish` (final evaluation, checklist, artifacts) and
`close` (on any exit).

Tracking never breaks training: every MLflow call goes through `_flush`, which
keeps what failed in a bounded buffer and retries it with a growing pause; the
failures, the retries and anything finally dropped are counted in `run.json`.
Under DDP only rank 0 tracks; every other rank gets a disabled tracker.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from .. import artifacts
from ..config import Config, TrackingConfig
from ..errors import UsageError

log = logging.getLogger("sustain.tracking.tracker")

CONNECT_TIMEOUT = 3.0  # seconds for the start-up check of a server
RETRY_PAUSES = (5.0, 15.0, 60.0)  # seconds between retries after a failure (then 60 s on)
MAX_PENDING = 10_000  # logging calls kept while a server is away; the oldest metrics go first
MLFLOW_BATCH = 1000  # MLflow's per-request limit on metrics (params: 100)
ARTIFACTS = (artifacts.REPORT_HTML, artifacts.CURVES_PNG, artifacts.CONFUSION_PNG, artifacts.F1_PNG,
             artifacts.EXPORT_META, artifacts.RUN, artifacts.HISTORY, artifacts.VAL_REPORT, artifacts.TEST_REPORT)
WEIGHTS = artifacts.EXPORT_WEIGHTS


def mlflow_uri(tracking: TrackingConfig, output_dir: str | Path) -> str:
    """The configured URI, or the embedded SQLite store beside the run folders (`<parent>/mlflow.db`)."""
    if tracking.mlflow.tracking_uri:
        return tracking.mlflow.tracking_uri
    return f"sqlite:///{Path(output_dir).expanduser().resolve().parent / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """An http(s) tracking server must answer (any HTTP status) within `timeout`, else a UsageError."""
    import urllib.error
    import urllib.request

    if urlsplit(uri).scheme not in ("http", "https"):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered: auth or routing is MLflow's business
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UsageError(f"MLflow tracking server {uri} cannot be reached: {reason}",
                         "start the server, fix tracking.mlflow.tracking_uri, or set "
                         "tracking.mlflow.enabled=false (the embedded store needs no server)") from None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"train": {"lr": 1e-4}}` → `{"train.lr": "0.0001"}`; lists become their text."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]  # MLflow's param length limit
    return flat


def data_params(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The data summary's key numbers: images per split, source and class; duplicates; corrupt files."""
    dup = summary.get("duplicates") or {}
    out: dict[str, Any] = {"data.total_images": summary.get("total_images"),
                           "data.manifest_hash": summary.get("manifest_hash"),
                           "data.duplicates_merged": dup.get("exact_merged"),
                           "data.near_duplicate_images": dup.get("near_duplicate_images"),
                           "data.corrupt": (summary.get("corrupt") or {}).get("total"),
                           "data.imbalance_ratio": summary.get("imbalance_ratio")}
    out.update({f"data.split.{k}": v for k, v in (summary.get("splits") or {}).items()})
    out.update({f"data.source.{k}": v.get("images") for k, v in (summary.get("sources") or {}).items()})
    out.update({f"data.class.{k}": v.get("total") for k, v in (summary.get("classes") or {}).items()})
    return out


def final_metrics(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """`{split}.acc`, `.macro_f1`, `.f1.<class>`, `.source_acc.<source>`, `.bin_acc.<bin>` from the reports."""
    out: dict[str, float] = {}
    for split, r in reports.items():
        out[f"final.{split}.acc"] = r.get("accuracy")
        out[f"final.{split}.macro_f1"] = r.get("macro_f1")
        out[f"final.{split}.set_acc"] = r.get("set_accuracy")
        for c in r.get("classes") or []:
            out[f"final.{split}.f1.{c}"] = (r.get(c) or {}).get("f1-score")
        for s, v in (r.get("per_source_accuracy") or {}).items():
            out[f"final.{split}.source_acc.{s}"] = v.get("acc")
        bins = r.get("bin_accuracy") or {}
        out[f"final.{split}.bin_acc"] = bins.get("acc")
        for b, v in (bins.get("per_bin") or {}).items():
            out[f"final.{split}.bin_acc.{b}"] = v.get("acc")
    return {k: float(v) for k, v in out.items() if _finite(v)}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _safe_key(name: str) -> str:
    """MLflow keys allow letters, digits, _ - . / and space; class names may hold anything."""
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in name)


class Tracker:
    """TensorBoard + MLflow for one run; every method is a no-op when tracking is off or on rank > 0."""

    def __init__(self, tracking: TrackingConfig | None, out_dir: Path | None) -> None:
        self.cfg, self.out_dir = tracking, out_dir
        self.tb_on = bool(tracking and tracking.tensorboard)
        self.mlflow_on = bool(tracking and tracking.mlflow.enabled)
        self.uri = mlflow_uri(tracking, out_dir) if self.mlflow_on else None
        self.writer: Any = None
        self.client: Any = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.step = 0  # the TensorBoard step: batches seen by the whole run
        self.images_logged = False
        self.mean = self.std = None
        self.pending: deque[tuple[str, Any]] = deque()  # MLflow operations not yet delivered
        self.counts = {"failures": 0, "retried_ok": 0, "dropped": 0}
        self.next_try = 0.0
        self.streak = 0  # failed deliveries in a row: the retry pause grows with it
        self.closed = False

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, cfg: Config, *, is_main: bool | None = None) -> Tracker:
        """Check the server before anything slow; nothing is written yet."""
        if is_main is None:
            is_main = int(os.environ.get("RANK", "0")) == 0
        tracker = cls(cfg.tracking if is_main else None, Path(cfg.output_dir).expanduser().resolve())
        if tracker.mlflow_on:
            if urlsplit(tracker.uri).scheme in ("http", "https"):
                # Seconds, not MLflow's minutes of retries: our own buffer retries later.
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            check_reachable(tracker.uri)
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
        self.images_logged = bool(resume.get("images_logged", False))
        self.mean, self.std = data_config.get("mean"), data_config.get("std")
        if self.tb_on:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides, in TensorBoard, the events a crashed run wrote after its checkpoint,
            # and on a fresh start (0) those of an earlier run in this folder
            self.writer = SummaryWriter(str(self.out_dir), purge_step=self.step + 1 if resume else 0)
            if not resume:
                self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flatten(cfg.to_dict()).items()))
            log.info("📈 TensorBoard: tensorboard --logdir %s", self.out_dir.parent)
        if not self.mlflow_on:
            return
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id = resume.get("mlflow_run_id")
        if self.run_id is None:
            params = {**flatten(cfg.to_dict()), **flatten(dict(system)),
                      **{k: str(v) for k, v in data_params(summary).items()}, **_versions()}
            self.pending.append(("params", params))
        self.pending.append(("tags", {"sustain.output_dir": str(self.out_dir),
                                      **({"sustain.resumed_at_step": str(self.step)} if resume else {})}))
        if resume:  # an interrupted run was marked KILLED or FAILED: it runs again
            self.pending.append(("status", "RUNNING"))
        self._flush(force=True)
        if self.run_id:
            log.info("📈 MLflow: run %s in experiment %r at %s", self.run_id, self.cfg.mlflow.experiment, self.uri)

    def close(self, status: str = "FINISHED") -> None:
        if self.closed:
            return
        self.closed = True
        if self.writer is not None:
            self.writer.close()
        if self.client is not None:
            self.pending.append(("status", status))
            self._flush(force=True)
            self._drop_pending()

    # ------------------------------------------------------------------ logging

    def log_step(self, step: int, images: Any, loss_sum: Any, seen: int, t_start: float) -> None:
        """The first augmented batch as an image grid; every N steps the running loss and throughput."""
        self.step = step
        if self.writer is not None and not self.images_logged and images is not None and len(images):
            self._image_grid(images)
        n = self.cfg.log_every_n_steps if self.cfg else 0
        if not n or step % n or not seen:
            return
        values = {"train/running_loss": float(loss_sum) / seen,
                  "train/images_per_second": seen / max(time.perf_counter() - t_start, 1e-9)}
        self._scalars(values, step, send=False)  # MLflow gets them with the epoch's batch: one write per epoch

    def log_epoch(self, entry: Mapping[str, Any], classes: list[str]) -> None:
        """One history entry: the metrics, the LR, the health verdict (0 healthy, 1 warning, 2 critical)."""
        if self.cfg is None:
            return
        epoch = int(entry["epoch"])
        values = {f"epoch/{k}": v for k, v in entry.items() if k not in ("epoch", "health", "per_class_f1")}
        values["epoch/health"] = {"healthy": 0, "warning": 1, "critical": 2}.get(entry.get("health"), None)
        for c, f in zip(classes, entry.get("per_class_f1") or [], strict=False):
            values[f"val_f1/{_safe_key(c)}"] = f
        self._scalars(values, epoch)

    def finish(self, out_dir: Path, run: Mapping[str, Any]) -> dict[str, Any] | None:
        """Final evaluation, checklist, confusion image and artifacts; returns the counts for run.json
        (None when tracking is off)."""
        if self.cfg is not None:
            import json

            reports = {split: json.loads(p.read_text(encoding="utf-8")) for split, p in
                       (("val", out_dir / artifacts.VAL_REPORT),
                        ("test", out_dir / artifacts.TEST_REPORT)) if p.is_file()}
            metrics = final_metrics(reports)
            metrics.update({f"checklist.{it['id']}": float(it["passed"]) for it in run.get("checklist") or []})
            self._scalars(metrics, int(run.get("epochs_completed") or 0))
            if self.writer is not None and (out_dir / artifacts.CONFUSION_PNG).is_file():  # the report's plot
                from PIL import Image

                with Image.open(out_dir / artifacts.CONFUSION_PNG) as im:
                    pixels = np.asarray(im.convert("RGB"))
                self.writer.add_image("val/confusion_matrix", pixels, self.step, dataformats="HWC")
            if self.client is not None:
                names = ARTIFACTS + ((WEIGHTS,) if self.cfg.mlflow.log_weights else ())
                # Overwrites an interruption's tags when a resumed run finishes: the tags say how it ended.
                self.pending.append(("tags", {"sustain.status": str(run.get("status")),
                                              "sustain.stop_reason": str(run.get("stop_reason") or "none")}))
                self.pending.extend(("artifact", out_dir / n) for n in names if (out_dir / n).is_file())
        self.close("FINISHED" if run.get("status") == "completed" else "FAILED")
        return self.record() if self.cfg is not None else None

    def interrupted(self, reason: str) -> None:
        """A stop signal ended the run after saving its position: MLflow's KILLED (the user stopped
        it, `--resume auto` continues it), tagged with the reason."""
        if self.client is not None:
            self.pending.append(("tags", {"sustain.status": "interrupted", "sustain.stop_reason": reason}))
        self.close("KILLED")

    def state(self) -> dict[str, Any]:
        """What `last.pth` keeps so a resumed run appends to the same run and step."""
        return {"mlflow_run_id": self.run_id, "tensorboard_step": self.step, "images_logged": self.images_logged}

    def record(self) -> dict[str, Any]:
        """The `run.json` entry: where the run was logged, and how delivery went."""
        return {"tensorboard": self.tb_on, "tensorboard_step": self.step,
                "mlflow": {"enabled": self.mlflow_on, "tracking_uri": self.uri,
                           "experiment": self.cfg.mlflow.experiment if self.cfg else None, "run_id": self.run_id,
                           "pending": len(self.pending), **self.counts}}

    # ------------------------------------------------------------------ internals

    def _scalars(self, values: Mapping[str, Any], step: int, send: bool = True) -> None:
        values = {k: float(v) for k, v in values.items() if _finite(v)}
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
        if self.client is not None:
            self.pending.append(("metrics", (values, step, int(time.time() * 1000))))
            self._trim()
            if send:
                self._flush()

    def _image_grid(self, images: Any) -> None:
        import torch
        from torchvision.utils import make_grid

        x = images[:32].detach().float().cpu()
        if self.mean is not None and self.std is not None:  # undo the normalisation: show what the model sees
            x = x * torch.tensor(self.std).view(1, -1, 1, 1) + torch.tensor(self.mean).view(1, -1, 1, 1)
        self.writer.add_image("train/first_batch_augmented", make_grid(x.clamp(0, 1), nrow=8), self.step)
        self.images_logged = True

    def _flush(self, force: bool = False) -> None:
        """Deliver the pending MLflow operations in order; on failure keep them and pause retries."""
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
            items = [Param(_safe_key(k), v) for k, v in payload.items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i:i + 100])
        elif kind == "tags":
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in payload.items()])
        elif kind == "metrics":
            values, step, stamp = payload
            items = [Metric(_safe_key(k), v, stamp, step) for k, v in values.items()]
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


def _versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"version.python": platform.python_version()}
    for name in ("torch", "torchvision", "timm", "numpy", "sustain"):
        try:
            out[f"version.{name}"] = version(name)
        except PackageNotFoundError:
            out[f"version.{name}"] = "unknown"
    return out

"""The model `sustain serve` answers with: the `Predictor`, its id and the facts of its card.

``PATH`` is a run folder, an ``export/`` folder or a ``.onnx`` file. The ONNX backend runs
``model.onnx`` (found as `Predictor.from_onnx` finds it; pass ``model_int8.onnx`` to serve int8);
the torch backend needs the run's checkpoint. A file the parity gate rejected is named
``*.rejected.onnx`` and never found here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..artifacts import EXPORT_REPORT, EXPORT_WEIGHTS, OOD_REPORT, TEST_REPORT
from ..errors import UsageError
from .inference import Predictor, resolve_onnx

log = logging.getLogger("sustain.deploy.serve")


@dataclass(frozen=True)
class ThreadPlan:
    """Threads for one machine: the model runs one batch at a time on all cores (intra-op);
    decoding runs beside it on a small pool. Never more model threads than cores."""

    model: int
    decode: int


def plan_threads(cores: int) -> ThreadPlan:
    cores = max(1, cores)
    return ThreadPlan(model=cores, decode=min(4, max(1, cores // 2)))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass
class ServedModel:
    predictor: Predictor
    backend: str
    model_file: Path
    run_dir: Path | None

    @property
    def model_id(self) -> dict[str, str]:
        return model_id(self.predictor.meta.get("model_name", "?"), self.model_file, self.predictor.classes)


def load_served_model(path: str | Path, backend: str, threads: int) -> ServedModel:
    """The predictor on the CPU with ``threads`` intra-op threads, and where its files are."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"No such run folder, export folder or model file: {path}",
                         "pass a run folder (checkpoints/NAME), its export/ folder or a .onnx file")
    torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    if backend == "onnx":
        onnx = resolve_onnx(path)
        predictor = Predictor.from_onnx(onnx, "cpu", threads=threads)
        return ServedModel(predictor, "onnx", onnx, _run_dir_of(onnx.parent))
    if backend != "torch":
        raise UsageError(f"Unknown --backend {backend!r}", "use onnx or torch")
    if path.suffix == ".onnx" or (path / "model.onnx").is_file() and not (path / EXPORT_WEIGHTS).is_file():
        raise UsageError(f"{path} is an ONNX export; the torch backend needs the run folder or its checkpoint",
                         "serve it with --backend onnx, or pass the run folder")
    predictor = Predictor.from_checkpoint(path, cpu)
    weights = path / EXPORT_WEIGHTS if path.is_dir() else path
    return ServedModel(predictor, "torch", weights, path if path.is_dir() else path.parent)


def _run_dir_of(folder: Path) -> Path | None:
    """The run folder an export sits in (``RUN/export/model.onnx``), when it is there."""
    for candidate in (folder, folder.parent):
        if (candidate / TEST_REPORT).is_file() or (candidate / "run.json").is_file():
            return candidate
    return None


def model_id(name: str, model_file: Path, classes: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Which model answered: its architecture, a hash of the served file and one of its class list."""
    digest = hashlib.sha256()
    with open(model_file, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    classes_hash = hashlib.sha256(json.dumps(list(classes)).encode()).hexdigest()
    return {"name": name, "export_hash": digest.hexdigest()[:16], "classes_hash": classes_hash[:16]}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("⚠️  %s not used for GET /model: %s", path, exc)
        return None


def model_facts(served: ServedModel) -> dict[str, Any]:
    """`GET /model`: what the model card says, as JSON; a fact not recorded is null."""
    p, meta = served.predictor, served.predictor.meta
    run = served.run_dir
    report = _read_json(run / TEST_REPORT) if run else None
    ood = _read_json(run / OOD_REPORT) if run else None
    gate = _read_json(served.model_file.parent / EXPORT_REPORT) if served.backend == "onnx" else None
    facts = {
        "model": served.model_id, "backend": served.backend,
        "precision": meta.get("precision", "fp32"), "classes": list(p.classes),
        "bins": {b: list(m) for b, m in p.taxonomy.bins.items()}, "input_size": list(meta.get("input_size") or []),
        "test_accuracy": (report or {}).get("accuracy"),
        "test_bin_accuracy": ((report or {}).get("bin_accuracy") or {}).get("acc"),
        "held_out_source_accuracy": held_out_accuracy(ood),
        "parity_gate_passed": (gate or {}).get("passed"),
    }
    for key in ("temperature", "accept_threshold"):  # calibration (#29), when the model carries them
        if meta.get(key) is not None:
            facts[key] = meta[key]
    return facts


def held_out_accuracy(ood: dict[str, Any] | None) -> dict[str, Any] | None:
    """Accuracy on the sources held out of training (``ood_classification_report.json``): overall
    and per source; None when no source was held out."""
    if not ood:
        return None
    return {"accuracy": ood.get("accuracy"), "n_fine": ood.get("n_fine"),
            "per_source": ood.get("per_source_accuracy") or {}}

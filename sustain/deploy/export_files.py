"""The files at the top of an export folder: a re-export clears the previous ones, and a file that
fails the parity gate is renamed ``*.rejected.onnx``, so the folder never holds a model under a
name that `Predictor` or `sustain serve` would load and the report does not vouch for."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from ..artifacts import EXPORT_REPORT

log = logging.getLogger("sustain.deploy.export")

# Everything an export writes at the top of its folder; a re-export clears them first, so the
# folder never holds a file the new report does not vouch for.
OUTPUTS = ("model.onnx", "model_int8.onnx", "model.rejected.onnx", "model_int8.rejected.onnx", "model.mlpackage",
           EXPORT_REPORT)


def clear_previous(out_dir: Path) -> None:
    """Remove the files of an earlier export in ``out_dir`` (the model folder is rewritten anyway)."""
    for name in OUTPUTS:
        old = out_dir / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
            log.info("  removed %s of the previous export", old)


def mark_rejected(report: dict[str, Any], out_dir: Path) -> None:
    """Rename each file that failed the gate to ``*.rejected.onnx``: kept to inspect, never loaded
    by `Predictor` or `sustain serve` as ``model.onnx`` / ``model_int8.onnx``."""
    for name, r in report["files"].items():
        if not r["passed"]:
            rejected = Path(name).with_suffix(".rejected.onnx").name
            (out_dir / name).replace(out_dir / rejected)
            r["rejected_as"] = rejected

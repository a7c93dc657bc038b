"""Plots and `report.html`, rebuilt from a run folder's artifacts alone (`sustain report`).

Reads (each optional; a missing one is named in the HTML instead of failing):
``metrics_history.json``, ``confusion_matrix.npy``, ``classification_report.json``
and their ``test_*`` twins, ``run.json``, ``data_summary.json`` and the
per-sample ``predictions_*.npz`` (the error gallery, `sustain.report.gallery_html`).
Writes ``training_curves.png``, ``confusion_matrix.png``, ``per_class_f1.png``,
``suspect_labels.csv`` and ``report.html`` (one self-contained file: images
inlined as base64, styles inline, no scripts, no request leaves the file).

The plots are drawn by `sustain.report.plots`, the page by `sustain.report.html`; this
module reads the artifacts and writes the files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import (
    CONFUSION_PNG,
    CURVES_PNG,
    DATA_SUMMARY,
    F1_PNG,
    HISTORY,
    OOD_REPORT,
    REPORT_HTML,
    RUN,
    SUSPECTS_CSV,
    TEST_CONFUSION,
    TEST_REPORT,
    VAL_CONFUSION,
    VAL_REPORT,
    ArtifactError,
    DataSummary,
    History,
    ModelMeta,
    Record,
    RunRecord,
)
from ..errors import UsageError
from ..evaluate import predictions_file, write_suspects_csv
from ..utils import atomic_write_text, finite_float
from .calibration_html import calibration_section
from .gallery_html import build_gallery
from .html import per_class, render_html
from .paths import PathView
from .plots import plot_confusion_matrix, plot_per_class_f1, plot_training_curves

log = logging.getLogger("sustain.report.writer")

ARTIFACTS = (HISTORY, VAL_CONFUSION, VAL_REPORT, TEST_CONFUSION, TEST_REPORT, RUN, DATA_SUMMARY,
             predictions_file("val"))



# --------------------------------------------------------------------------- reading artifacts


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        notes.append(f"{path.name} not found" + (" (the run may still be in progress)" if path.name == RUN else ""))
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        notes.append(f"{path.name} could not be read: {exc}")
        return None


def _read_record(record: type[Record], run_dir: Path, notes: list[str]) -> dict[str, Any] | None:
    """A record's file as its checked dict; missing or unreadable is a note on the page, not a failure."""
    if not (run_dir / record.FILE).is_file():
        notes.append(f"{record.FILE} not found" + (" (the run may still be in progress)" if record.FILE == RUN else ""))
        return None
    try:
        return record.read(run_dir).to_dict()
    except ArtifactError as exc:
        notes.append(f"{record.FILE} could not be read: {exc.message}")
        return None


def _warn_pct(run: Mapping[str, Any] | None) -> float | None:
    """The run's guards.warn_pct: the dashed line on the skipped-steps plot."""
    value = ((run or {}).get("config") or {}).get("guards", {}).get("warn_pct")
    return finite_float(value)


def _read_npy(path: Path, notes: list[str]) -> np.ndarray | None:
    if not path.is_file():
        notes.append(f"{path.name} not found")
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name} could not be read: {exc}")
        return None


def _classes(*sources: Any) -> list[str] | None:
    """The class list from the first artifact that records it."""
    for src in sources:
        if isinstance(src, Mapping) and isinstance(src.get("classes"), list):
            return [str(c) for c in src["classes"]]
    return None


# --------------------------------------------------------------------------- build


def build_report(run_dir: str | Path) -> Path:
    """Rebuild the three plots and report.html in `run_dir`; returns the HTML path."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise UsageError(f"Run folder not found: {run_dir}", "pass the output_dir of a training run")
    if not any((run_dir / name).is_file() for name in ARTIFACTS):
        raise UsageError(f"No run artifacts in {run_dir} (looked for {', '.join(ARTIFACTS)})",
                         "pass the output_dir of a training run")
    notes: list[str] = []
    history = _read_record(History, run_dir, notes)
    run = _read_record(RunRecord, run_dir, notes)
    data_summary = _read_record(DataSummary, run_dir, notes)
    val = _read_json(run_dir / VAL_REPORT, notes)
    test = _read_json(run_dir / TEST_REPORT, notes)
    ood = _read_json(run_dir / OOD_REPORT, notes) if (run_dir / OOD_REPORT).is_file() else None
    confusion = _read_npy(run_dir / VAL_CONFUSION, notes)
    test_confusion = _read_npy(run_dir / TEST_CONFUSION, notes)
    classes = _classes(val, test, run, _read_record(ModelMeta, run_dir, notes))
    if classes is None and confusion is not None:
        classes = [str(i) for i in range(len(confusion))]

    images: dict[str, Path] = {}
    if isinstance(history, Mapping) and history:
        images["Training curves"] = plot_training_curves(history, run_dir / CURVES_PNG, _warn_pct(run))
    if confusion is not None and classes is not None and confusion.shape == (len(classes), len(classes)):
        images["Confusion matrix (val)"] = plot_confusion_matrix(confusion, classes, run_dir / CONFUSION_PNG)
    elif confusion is not None:
        notes.append(f"{VAL_CONFUSION} has shape {confusion.shape}, not {len(classes or [])}×{len(classes or [])}: not plotted")
    if isinstance(val, Mapping) and classes:
        f1, support = per_class(val, classes)
        images["Per-class F1 (val)"] = plot_per_class_f1(f1, support, classes, run_dir / F1_PNG)

    view = PathView.of(run_dir, run)  # every file the page and the CSV name, relative to a root
    gallery = build_gallery(run_dir, notes=notes, view=view)
    if (run_dir / predictions_file("val")).is_file():
        write_suspects_csv(run_dir / SUSPECTS_CSV, gallery.suspects, lambda s: view.in_source(s.path, s.source))
    notes = [view.text(n) for n in notes]
    page = render_html(run_dir=run_dir, view=view, history=history, run=run, data_summary=data_summary,
                       reports={"val": val, "test": test, **({"ood": ood} if ood is not None else {})},
                       confusions={"val": confusion, "test": test_confusion},
                       classes=classes, images=images, notes=notes, gallery=gallery,
                       extra_sections=[calibration_section(run_dir)])
    out = atomic_write_text(run_dir / REPORT_HTML, page)
    log.debug("report written with %d plot(s), %d suspect label(s), %.1f MB of thumbnails; notes: %s",
              len(images), len(gallery.suspects), gallery.thumbnails_bytes / 1e6, notes)
    return out

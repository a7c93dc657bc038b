"""The reports of a scored split and the final evaluation writers (SPEC §7).

`write_final_evaluation` scores the given weights (the caller's model, or the
exported best weights when `checkpoint=` is given) on each split and writes
``confusion_matrix.npy`` + ``classification_report.json`` for val and
``<split>_confusion_matrix.npy`` + ``<split>_classification_report.json`` for the
others (``test_*``), plus each split's per-sample store for the gallery.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import classification_report

from ..artifacts import VAL_CONFUSION, VAL_REPORT, checkpoint_record, export_paths, read_meta
from ..errors import UsageError
from ..model import load_weights
from ..taxonomy import Taxonomy
from ..utils import atomic_write, atomic_write_json, fmt_metric, portable_path
from .calibration import calibrate
from .gallery import SamplePredictions, predictions_file, save_predictions
from .metrics import expected_calibration_error, final_metrics
from .predictions import Predictions, collect_predictions, indexed_loader
from .selective import accept_report

log = logging.getLogger("sustain.evaluate")


def build_classification_report(
    preds: Predictions, taxonomy: Taxonomy, sources: Sequence[str] | None, split: str,
    calibration: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """The JSON report of one split and its C×C confusion matrix.

    The top level is scikit-learn's ``classification_report(output_dict=True)``
    over all C classes in taxonomy order (zero_division=0), so
    ``report["<class>"]["f1-score"]`` works as usual. Our additions sit beside
    it under their own keys (see docs/evaluation.md).
    """
    probs = preds.probs.numpy()
    targets = preds.targets.numpy()
    m = final_metrics(probs, targets, taxonomy, preds.source_ids.numpy(), sources)
    report = _sklearn_report(probs, targets, taxonomy)
    overlap = set(report) & _EXTRA_KEYS
    if overlap:
        raise UsageError(f"class names {sorted(overlap)} collide with report keys", "rename those classes")
    report.update(
        {
            "split": split,
            "classes": list(taxonomy.classes),
            "n_samples": int(len(probs)),
            "n_fine": m["n_fine"],
            "n_set": m["n_set"],
            "failed": int(preds.failed),
            "macro_f1": m["macro_f1"],
            "set_accuracy": m["set_acc"],
            "top5_accuracy": m["top5_acc"],
            "expected_calibration_error": m["ece"],
            "expected_calibration_error_uncalibrated": expected_calibration_error(preds.raw_probs.numpy(), targets),
            "temperature": float(preds.temperature),
            "bin_accuracy": m["bin"],
            "per_source_accuracy": m["per_source"],
            "worst_classes": [{"class": c, "f1": f, "support": s} for c, f, s in m["worst"]],
        }
    )
    if calibration is not None:
        report["calibration"] = dict(calibration)
        if calibration.get("accept_accuracy") is not None:
            report["accept_or_review"] = {
                "decided_on": calibration["accept_on"],
                **accept_report(probs, targets, taxonomy, calibration["accept_accuracy"],
                                calibration.get("accept_thresholds")
                                or {calibration["accept_on"]: calibration.get("accept_threshold")})}
    return report, m["confusion"]


_EXTRA_KEYS = frozenset(
    {
        "split", "classes", "n_samples", "n_fine", "n_set", "failed", "macro_f1", "set_accuracy",
        "top5_accuracy", "expected_calibration_error", "bin_accuracy", "per_source_accuracy",
        "worst_classes", "checkpoint", "expected_calibration_error_uncalibrated", "temperature", "calibration",
        "accept_or_review",
    }
)


def _sklearn_report(probs: np.ndarray, targets: np.ndarray, taxonomy: Taxonomy) -> dict[str, Any]:
    fine = (targets > 0.5).sum(axis=1) == 1
    names = list(taxonomy.classes)
    if not fine.any():  # scikit-learn refuses empty input; same shape, all zero
        zero = {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0.0}
        return {**{c: dict(zero) for c in names}, "accuracy": 0.0,
                "macro avg": dict(zero), "weighted avg": dict(zero)}
    return classification_report(
        targets[fine].argmax(axis=1),
        probs[fine].argmax(axis=1),
        labels=list(range(taxonomy.num_classes)),
        target_names=names,
        output_dict=True,
        zero_division=0,
    )


def report_paths(out_dir: Path, split: str, stem: str | None = None) -> tuple[Path, Path]:
    """(confusion .npy, report .json) of a split. By default val has no prefix and
    other splits are prefixed with their name (SPEC §7); `stem` replaces the prefix."""
    if stem is None:
        stem = "" if split == "val" else f"{split}_"
    return out_dir / f"{stem}{VAL_CONFUSION}", out_dir / f"{stem}{VAL_REPORT}"


def write_split_report(
    preds: Predictions,
    taxonomy: Taxonomy,
    sources: Sequence[str] | None,
    out_dir: str | Path,
    split: str,
    *,
    stem: str | None = None,
    checkpoint: Mapping[str, Any] | None = None,
    calibration: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one split's confusion matrix and report atomically; return the report."""
    report, confusion = build_classification_report(preds, taxonomy, sources, split, calibration)
    if checkpoint is not None:
        report["checkpoint"] = dict(checkpoint)
    cm_path, json_path = report_paths(Path(out_dir), split, stem)
    atomic_write(cm_path, lambda fh: np.save(fh, confusion))
    atomic_write_json(json_path, report)
    return report


def write_final_evaluation(
    model: torch.nn.Module,
    loaders: Mapping[str, Iterable[Any] | None],
    taxonomy: Taxonomy,
    sources: Sequence[str] | None,
    out_dir: str | Path,
    device: torch.device | str,
    autocast: Any = None,
    *,
    checkpoint: str | Path | None = None,
    calibration: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Score the best weights on each split and write the SPEC §7 reports.

    With ``checkpoint`` (a ``best_model.safetensors`` path, or the run folder
    holding it) those weights are loaded into `model` first, and the report
    records their epoch; the engine passes it so the final numbers can never
    come from the last epoch's live weights. With ``calibration`` (the config's
    ``{"temperature": "auto"|"off"|T, "accept_accuracy": target|None}``) the
    temperature and thresholds are chosen on val (`calibration.calibrate`) and
    every split's reports and store hold calibrated probabilities; each report's
    ``calibration`` holds the choice. Returns ``{split: report}``; a split whose
    loader is None is skipped.
    """
    record = None
    if checkpoint is not None:
        weights, meta = export_paths(Path(checkpoint))
        load_weights(model, weights)
        record = checkpoint_record(weights, read_meta(meta) if meta.is_file() else {})
        record["path"] = portable_path(weights.absolute(), [Path(out_dir).absolute()])  # a shared file: relative
    device = torch.device(device)
    model.to(device)
    scored = {split: collect_predictions(model, indexed_loader(loader), device, autocast,
                                         desc=f"Final evaluation ({split})")
              for split, loader in loaders.items() if loader is not None}
    chosen = _calibrate(scored.get("val"), taxonomy, calibration)
    results: dict[str, dict[str, Any]] = {}
    for split, preds in scored.items():
        preds.temperature = chosen["temperature"] if chosen else 1.0
        results[split] = write_split_report(preds, taxonomy, sources, out_dir, split, checkpoint=record,
                                            calibration=chosen)
        write_prediction_store(preds, getattr(loaders[split], "dataset", None), taxonomy, sources,
                               Path(out_dir) / predictions_file(split), split)
        log.info("%s", summary_line(results[split]))
    return results


def _calibrate(val: Predictions | None, taxonomy: Taxonomy,
               settings: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if settings is None:
        return None
    if val is None:  # nothing to fit on: T = 1 and no threshold, said so
        val = Predictions(torch.zeros(0, taxonomy.num_classes), torch.zeros(0, taxonomy.num_classes),
                          torch.zeros(0, dtype=torch.long), 0)
    chosen = calibrate(val.logits, val.targets.numpy(), taxonomy, settings["temperature"],
                       settings.get("accept_accuracy"))
    log.info("%s", calibration_line(chosen))
    return chosen


def calibration_line(c: Mapping[str, Any]) -> str:
    """The end-of-training line on T and the threshold."""
    how = f"fitted on {c['n_images']} val images" if c["method"] == "fitted" else c["reason"]
    line = f"🌡️  Temperature {c['temperature']:.3g} ({how})"
    if c.get("accept_accuracy") is not None:
        t = c["accept_threshold"]
        line += (f"; accept when the {c['accept_on']} probability ≥ {t:.4f} (target {c['accept_accuracy']:.2%})"
                 if t is not None else f"; ⚠️  no threshold backs {c['accept_accuracy']:.2%} on val: every "
                 "prediction goes to review")
    return line


def write_prediction_store(preds: Predictions, dataset: Any, taxonomy: Taxonomy, sources: Sequence[str] | None,
                           path: Path, split: str, *, in_sample: bool = False) -> Path | None:
    """``predictions_<split>.npz`` (see `sustain.evaluate.gallery`): each scored image's path, source, given
    label, probabilities and targets, for `sustain report`'s gallery. Needs the dataset's
    ``paths`` and predictions from an `indexed_loader`; otherwise nothing is written."""
    if preds.indices is None or not hasattr(dataset, "paths"):
        log.debug("no per-sample store for %s: the loader does not say which file each row is", split)
        return None
    targets = preds.targets.numpy() > 0.5
    names: dict[tuple[int, ...], str] = {}
    labels = [names.setdefault(key, taxonomy.label_name(key))
              for key in map(tuple, (np.flatnonzero(t).tolist() for t in targets))]
    source_names = [sources[i] if sources else "" for i in preds.source_ids.tolist()]
    store = SamplePredictions(split=split, classes=tuple(taxonomy.classes),
                              paths=np.array([dataset.paths[i] for i in preds.indices.tolist()], dtype=str),
                              sources=np.array(source_names, dtype=str), labels=np.array(labels, dtype=str),
                              probs=preds.probs.numpy(), targets=targets, in_sample=in_sample)
    return save_predictions(path, store)


def summary_line(report: Mapping[str, Any]) -> str:
    """One readable line per split, e.g. for the end of training and `sustain evaluate`."""
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f}%"

    return (
        f"📊 {report['split']}: Acc {pct(report['accuracy'])} ({report['n_fine']} fine-labelled images), "
        f"Macro F1 {report['macro_f1']:.4f}, Top-5 {pct(report['top5_accuracy'])}, "
        f"Bin {pct(report['bin_accuracy']['acc'])}, Set {pct(report['set_accuracy'])} "
        f"({report['n_set']} set-labelled), ECE {fmt_metric(report['expected_calibration_error'])}"
        + _calibration_suffix(report)
    )


def _calibration_suffix(report: Mapping[str, Any]) -> str:
    text = ""
    if report.get("temperature", 1.0) != 1.0:
        text += f" (before T = {report['temperature']:.3g}: {fmt_metric(report['expected_calibration_error_uncalibrated'])})"
    accept = report.get("accept_or_review")
    if accept:
        a = accept[accept["decided_on"]]
        acc = "n/a" if a["accepted_accuracy"] is None else f"{a['accepted_accuracy']:.2%}"
        text += (f"; accepted {a['accepted']}/{a['n']} at {acc} ({accept['decided_on']}, "
                 f"target {a['target']:.2%}: {a['status']}), {a['review']} to review")
    return text

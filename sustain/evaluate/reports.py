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
from .gallery import SamplePredictions, predictions_file, save_predictions
from .metrics import final_metrics
from .predictions import Predictions, collect_predictions, indexed_loader

log = logging.getLogger("sustain.evaluate")


def build_classification_report(
    preds: Predictions, taxonomy: Taxonomy, sources: Sequence[str] | None, split: str
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
            "bin_accuracy": m["bin"],
            "per_source_accuracy": m["per_source"],
            "worst_classes": [{"class": c, "f1": f, "support": s} for c, f, s in m["worst"]],
        }
    )
    return report, m["confusion"]


_EXTRA_KEYS = frozenset(
    {
        "split", "classes", "n_samples", "n_fine", "n_set", "failed", "macro_f1", "set_accuracy",
        "top5_accuracy", "expected_calibration_error", "bin_accuracy", "per_source_accuracy",
        "worst_classes", "checkpoint",
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
) -> dict[str, Any]:
    """Write one split's confusion matrix and report atomically; return the report."""
    report, confusion = build_classification_report(preds, taxonomy, sources, split)
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
) -> dict[str, dict[str, Any]]:
    """Score the best weights on each split and write the SPEC §7 reports.

    With ``checkpoint`` (a ``best_model.safetensors`` path, or the run folder
    holding it) those weights are loaded into `model` first, and the report
    records their epoch; the engine passes it so the final numbers can never
    come from the last epoch's live weights. Returns ``{split: report}``; a
    split whose loader is None is skipped.
    """
    record = None
    if checkpoint is not None:
        weights, meta = export_paths(Path(checkpoint))
        load_weights(model, weights)
        record = checkpoint_record(weights, read_meta(meta) if meta.is_file() else {})
        record["path"] = portable_path(weights.absolute(), [Path(out_dir).absolute()])  # a shared file: relative
    device = torch.device(device)
    model.to(device)
    results: dict[str, dict[str, Any]] = {}
    for split, loader in loaders.items():
        if loader is None:
            continue
        preds = collect_predictions(model, indexed_loader(loader), device, autocast,
                                    desc=f"Final evaluation ({split})")
        results[split] = write_split_report(preds, taxonomy, sources, out_dir, split, checkpoint=record)
        write_prediction_store(preds, getattr(loader, "dataset", None), taxonomy, sources,
                               Path(out_dir) / predictions_file(split), split)
        log.info("%s", summary_line(results[split]))
    return results


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
    )

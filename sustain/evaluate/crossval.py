"""Cross-validation results (docs/evaluation.md, "Cross-validation"): the per-fold entries, the
summary with its intervals, the shift gap, and the out-of-fold prediction store. Pure, except for
`save_oof` / `load_oof`.

Intervals: a fold's accuracy carries a Wilson 95% interval over its fine-labelled test images; the
mean over folds a Student-t 95% interval (k - 1 degrees of freedom), which says how much the
number moves with the data a fold draws, not with the test images alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Fold
from .gallery import SamplePredictions, load_predictions, save_predictions

OOF_SPLIT = "oof"
Z95 = 1.959964


def wilson(correct: int, n: int, z: float = Z95) -> list[float] | None:
    """The Wilson 95% interval of a proportion correct/n; None without images."""
    if n <= 0:
        return None
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6)]


def mean_interval(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample std and the Student-t 95% interval of the mean over the folds that have a value."""
    from scipy.stats import t

    x = np.array([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return {"n_folds": 0, "mean": None, "std": None, "ci95": None}
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    half = float(t.ppf(0.975, x.size - 1)) * std / math.sqrt(x.size) if x.size > 1 else None
    # both metrics are fractions: an interval end past 0 or 1 says nothing more than 0 or 1
    ci = [round(max(0.0, mean - half), 6), round(min(1.0, mean + half), 6)] if half is not None else None
    return {"n_folds": int(x.size), "mean": round(mean, 6), "std": round(std, 6), "ci95": ci}


def fold_entry(fold: Fold, report: Mapping[str, Any] | None, run_dir: str) -> dict[str, Any]:
    """One fold's line in crossval.json, from its test_classification_report.json (None: not finished)."""
    entry: dict[str, Any] = {
        "name": fold.name, "held_out": fold.held_out, "run_dir": run_dir,
        "n_train": fold.count("train"), "n_val": fold.count("val"), "n_test": fold.count("test"),
        "n_excluded": fold.count("excluded"), "near_duplicates_removed": fold.near_duplicates_removed,
        "unseen_class_images": dict(fold.unseen_class_images),
        "accuracy": None, "accuracy_ci95": None, "macro_f1": None, "set_accuracy": None, "n_fine": 0, "n_set": 0,
        "per_class_f1": {},
    }
    if report is None:
        return entry
    n_fine = int(report["n_fine"])
    accuracy = float(report["accuracy"]) if n_fine else None
    entry.update(accuracy=accuracy, macro_f1=report["macro_f1"] if n_fine else None,
                 set_accuracy=report["set_accuracy"], n_fine=n_fine, n_set=int(report["n_set"]),
                 accuracy_ci95=wilson(round(accuracy * n_fine), n_fine) if accuracy is not None else None,
                 per_class_f1={c: round(float(report[c]["f1-score"]), 6) for c in report["classes"]
                               if report.get(c, {}).get("support", 0) > 0})
    return entry


def summarize(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"accuracy": mean_interval([e["accuracy"] for e in entries]),
            "macro_f1": mean_interval([e["macro_f1"] for e in entries])}


# --------------------------------------------------------------------------- out-of-fold predictions


def merge_oof(stores: Sequence[tuple[int, SamplePredictions]]) -> tuple[SamplePredictions, np.ndarray]:
    """The folds' test stores as one: every image once, with the fold that scored it."""
    if not stores:
        raise ValueError("no fold has predictions to merge")
    classes = stores[0][1].classes
    for index, sp in stores:
        if sp.classes != classes:
            raise ValueError(f"fold {index} was scored with other classes: {sp.classes} != {classes}")
    cat = {k: np.concatenate([getattr(sp, k) for _, sp in stores]) for k in ("paths", "sources", "labels",
                                                                          "probs", "targets")}
    fold = np.concatenate([np.full(len(sp.paths), i, dtype=np.int64) for i, sp in stores])
    paths, counts = np.unique(cat["paths"], return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{int((counts > 1).sum())} images were scored by more than one fold, e.g. "
                         f"{paths[counts > 1][0]}: the folds overlap")
    return SamplePredictions(split=OOF_SPLIT, classes=classes, **cat), fold


def save_oof(path: str | Path, sp: SamplePredictions, fold: np.ndarray) -> Path:
    """predictions_oof.npz: the store `save_predictions` writes (same keys), plus `fold` per image."""
    return save_predictions(path, sp, {"fold": np.asarray(fold, dtype=np.int64)})


def load_oof(path: str | Path) -> tuple[SamplePredictions, np.ndarray]:
    sp = load_predictions(path)
    with np.load(path, allow_pickle=False) as z:
        if "fold" not in z.files:
            raise ValueError(f"{path} has no `fold`: it is not an out-of-fold store")
        return sp, z["fold"]


def oof_summary(sp: SamplePredictions) -> dict[str, Any]:
    """The pooled out-of-fold accuracy (fine-labelled images) with its interval, overall and per source."""
    fine = sp.fine
    correct = sp.predicted == sp.targets.argmax(axis=1)

    def score(mask: np.ndarray) -> dict[str, Any]:
        n = int((mask & fine).sum())
        k = int((mask & fine & correct).sum())
        return {"n_fine": n, "accuracy": round(k / n, 6) if n else None, "accuracy_ci95": wilson(k, n)}

    per_source = {str(s): score(sp.sources == s) for s in np.unique(sp.sources)}
    return {"n_images": int(len(sp.paths)), **score(np.ones(len(fine), dtype=bool)), "per_source": per_source}


def shift_gaps(entries: Sequence[Mapping[str, Any]], in_domain: Mapping[str, Mapping[str, Any]],
               in_domain_from: str | None) -> list[dict[str, Any]]:
    """Per held-out source: its out-of-source accuracy beside its in-domain accuracy; gap = in - out."""
    out = []
    for e in entries:
        home = in_domain.get(str(e["held_out"]), {})
        acc_in = home.get("accuracy")
        gap = round(acc_in - e["accuracy"], 6) if acc_in is not None and e["accuracy"] is not None else None
        out.append({"source": e["held_out"], "out_of_source_accuracy": e["accuracy"],
                    "out_of_source_ci95": e["accuracy_ci95"], "n_out_of_source": e["n_fine"],
                    "in_domain_accuracy": acc_in, "in_domain_ci95": home.get("accuracy_ci95"),
                    "n_in_domain": home.get("n_fine", 0), "in_domain_from": in_domain_from if acc_in is not None
                    else None, "shift_gap": gap})
    return out

"""Accept or review (issue #29): a confidence threshold chosen on val for a stated accuracy.

A sorting station acts on the disposal bin, so the decision is taken on the bin's
probability (the calibrated probabilities of the predicted class's bin, summed) and
the bin is what must be right; the same rule on the class's own probability is reported
beside it. A taxonomy without bins decides on the class.

The threshold is the lowest confidence at which the **lower bound** of the 95%
Clopper–Pearson interval on the accepted val images' accuracy still meets the target,
so the promise is one the val data can back. None when no threshold can: with all
accepted images right, the bound reaches 0.98 only from 183 images on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import beta

from ..taxonomy import Taxonomy

LEVEL = 0.95  # two-sided confidence of the accuracy interval


def interval(k: Any, n: Any, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Clopper–Pearson (exact binomial) interval on k right out of n; (0, 1) for n = 0."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    a = (1 - level) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k > 0, beta.ppf(a, k, n - k + 1), 0.0)
        hi = np.where(k < n, beta.ppf(1 - a, k + 1, n - k), 1.0)
    return np.nan_to_num(lo, nan=0.0), np.nan_to_num(hi, nan=1.0)


def choose_threshold(conf: np.ndarray, correct: np.ndarray, target: float, level: float = LEVEL) -> float | None:
    """The lowest threshold t such that the images with confidence ≥ t have an accuracy whose
    lower bound meets `target` (the widest coverage the data backs), or None."""
    conf, correct = np.asarray(conf, dtype=float), np.asarray(correct, dtype=bool)
    if not len(conf):
        return None
    order = np.argsort(-conf, kind="stable")
    c, ok = conf[order], correct[order]
    last = np.r_[c[1:] != c[:-1], True]  # a threshold accepts every image tied at its value
    n = np.arange(1, len(c) + 1)[last]
    k = np.cumsum(ok)[last]
    lo, _ = interval(k, n, level)
    feasible = np.flatnonzero(lo >= target)
    return float(c[last][feasible[-1]]) if len(feasible) else None


def _groups(taxonomy: Taxonomy, on: str) -> np.ndarray:
    """Each class's decision group: its bin (on="bin"), or itself; a class without a bin is its own."""
    if on == "class" or not taxonomy.bins:
        return np.arange(taxonomy.num_classes)
    names = list(taxonomy.bins)
    return np.array([names.index(b) if (b := taxonomy.bin_of(c)) is not None else len(names) + i
                     for i, c in enumerate(taxonomy.classes)])


def decision_confidence(probs: np.ndarray, taxonomy: Taxonomy, on: str) -> np.ndarray:
    """The probability a decision reads: the top class's, or the sum over the top class's bin."""
    probs = np.asarray(probs, dtype=float)
    groups = _groups(taxonomy, on)
    top = groups[probs.argmax(axis=1)]
    return np.array([row[groups == g].sum() for row, g in zip(probs, top, strict=True)])


def scored(probs: np.ndarray, targets: np.ndarray, taxonomy: Taxonomy, on: str) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, right) of the rows with one true group: fine labels, and for bins also sets
    inside one bin (as `bin_accuracy` counts them)."""
    probs, t = np.asarray(probs, dtype=float), np.asarray(targets) > 0.5
    groups = _groups(taxonomy, on)
    truth = [set(groups[np.flatnonzero(row)].tolist()) for row in t]
    keep = np.array([len(g) == 1 for g in truth], dtype=bool)
    pred = groups[probs.argmax(axis=1)]
    right = np.array([len(g) == 1 and p in g for p, g in zip(pred, truth, strict=True)], dtype=bool)
    return decision_confidence(probs, taxonomy, on)[keep], right[keep]


@dataclass(frozen=True)
class AcceptPolicy:
    """What a model carries to say accept or review: the target, the rule's level, its threshold
    (None: the target could not be backed on val, so everything goes to review)."""

    target: float
    on: str  # "bin" or "class"
    threshold: float | None

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> AcceptPolicy | None:
        if meta.get("accept_accuracy") is None:
            return None
        return cls(float(meta["accept_accuracy"]), str(meta.get("accept_on") or "class"), meta.get("accept_threshold"))

    def decisions(self, probs: np.ndarray, taxonomy: Taxonomy) -> list[str]:
        if self.threshold is None:
            return ["review"] * len(probs)
        conf = decision_confidence(np.atleast_2d(probs), taxonomy, self.on)
        return ["accept" if c >= self.threshold else "review" for c in conf]


def decision_level(taxonomy: Taxonomy) -> str:
    return "bin" if taxonomy.bins else "class"


def coverage_summary(conf: np.ndarray, right: np.ndarray, threshold: float | None, target: float) -> dict[str, Any]:
    """What a threshold does on one split: coverage, accepted accuracy with its interval, the
    review count, and whether the target holds ("met": the lower bound meets it; "unproven":
    only the point estimate does; "failed": not even that; "nothing accepted")."""
    n = len(conf)
    accepted = conf >= threshold if threshold is not None else np.zeros(n, dtype=bool)
    k, m = int(right[accepted].sum()), int(accepted.sum())
    lo, hi = interval(k, m)
    acc = k / m if m else None
    status = ("nothing accepted" if not m else "met" if float(lo) >= target
              else "unproven" if acc >= target else "failed")
    return {"threshold": threshold, "target": target, "n": n, "accepted": m, "review": n - m,
            "coverage": m / n if n else None, "accuracy_all": float(right.mean()) if n else None,
            "accepted_accuracy": acc, "interval": [float(lo), float(hi)] if m else None, "status": status}


def accept_report(probs: np.ndarray, targets: np.ndarray, taxonomy: Taxonomy, target: float,
                  thresholds: Mapping[str, float | None]) -> dict[str, Any]:
    """`coverage_summary` of any split's predictions, per level in `thresholds` ("bin", "class")."""
    out = {}
    for on, threshold in thresholds.items():
        conf, right = scored(probs, targets, taxonomy, on)
        out[on] = coverage_summary(conf, right, threshold, target)
    return out


def choose_thresholds(probs: np.ndarray, targets: np.ndarray, taxonomy: Taxonomy,
                      target: float) -> dict[str, float | None]:
    """The val thresholds for the bin (when the taxonomy has bins) and for the class."""
    levels = ["bin", "class"] if taxonomy.bins else ["class"]
    return {on: choose_threshold(*scored(probs, targets, taxonomy, on), target) for on in levels}


def risk_coverage(conf: np.ndarray, right: np.ndarray) -> dict[str, list[float]]:
    """Accepted accuracy against coverage as the threshold falls (for the report's curve)."""
    order = np.argsort(-np.asarray(conf), kind="stable")
    ok = np.asarray(right, dtype=float)[order]
    n = np.arange(1, len(ok) + 1)
    return {"coverage": (n / max(len(ok), 1)).tolist(), "accuracy": (np.cumsum(ok) / n).tolist(),
            "confidence": np.asarray(conf, dtype=float)[order].tolist()}

"""Which labelled images are probably mislabelled: cleanlab's confident learning, or the fixed rule.

`find_label_issues(probs, given)` takes held-out probabilities (out-of-fold for a
cross-validation, val+test for one run) of fine-labelled images and returns the
likely label errors, worst first, with their label quality: the probability the
model gives the given class (cleanlab's ``self_confidence`` score, the ranking
cleanlab documents for `find_label_issues`).

`method` is one of cleanlab's ``filter_by`` rules (`CLEANLAB_METHODS`), which
estimate per-class thresholds from the data, or `FIXED` (the rule Sustain used
before cleanlab: given label ≤ `FIXED_GIVEN_MAX` while another class ≥
`FIXED_OTHER_MIN`). The default, `DEFAULT_METHOD`, is the one
benchmarks/bench_label_issues.py measured best on an easy and on a hard lake
(docs/evaluation.md has the figures). Set-labelled images have no single given
class, so cleanlab cannot score them: `fixed_rule` screens them on the
probability mass inside their set.
"""

from __future__ import annotations

import csv
import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import LABEL_ISSUES_CSV
from ..utils import atomic_write_text

log = logging.getLogger("sustain.evaluate.label_issues")

LABEL_ISSUES_COLUMNS = ("path", "source", "given", "suggested", "label_quality", "rank")
CLEANLAB_METHODS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning",
                    "predicted_neq_given", "low_normalized_margin", "low_self_confidence")
FIXED = "fixed_threshold"
METHODS = (*CLEANLAB_METHODS, FIXED)
DEFAULT_METHOD = "low_self_confidence"  # benchmarks/bench_label_issues.py: the goal met on both lakes
FIXED_GIVEN_MAX = 0.10  # at most this much probability on the given label (or inside its set) ...
FIXED_OTHER_MIN = 0.50  # ... while one class outside it gets at least this much


def fixed_rule(given_mass: np.ndarray, outside_max: np.ndarray, given_max: float = FIXED_GIVEN_MAX,
               other_min: float = FIXED_OTHER_MIN) -> np.ndarray:
    """Bool mask: the given label (a class, or the mass inside a set) gets ≤ `given_max` while one
    class outside it gets ≥ `other_min`."""
    return (given_mass <= given_max) & (outside_max >= other_min)


def _check(probs: np.ndarray, given: np.ndarray, method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"label-issue method {method!r} is not one of {', '.join(METHODS)}")
    if probs.ndim != 2 or given.shape != (len(probs),):
        raise ValueError(f"probs must be [N, C] and given [N]; got {probs.shape} and {given.shape}")
    if len(given) and (given.min() < 0 or given.max() >= probs.shape[1]):
        raise ValueError(f"given holds class indices outside 0..{probs.shape[1] - 1}")


def _cleanlab_mask(probs: np.ndarray, given: np.ndarray, method: str) -> np.ndarray:
    from cleanlab.filter import find_label_issues as cleanlab_find

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # n_jobs=1: the pool cleanlab would start costs more than it saves at these sizes
        mask = cleanlab_find(given, probs, filter_by=method, n_jobs=1)
    for message in dict.fromkeys(str(w.message) for w in caught):
        log.debug("cleanlab: %s", message)  # small classes ("may not flag all label issues in class k")
    return np.asarray(mask, dtype=bool)


def find_label_issues(probs: np.ndarray, given: np.ndarray, *, method: str | None = None) -> list[tuple[int, float]]:
    """(row index, label quality) of each likely mislabelled row, ranked worst first (lowest label
    quality, ties by index). probs [N, C] out-of-fold, given [N] int class indices of fine-labelled rows."""
    method = method or DEFAULT_METHOD
    probs = np.asarray(probs)  # its own dtype: the fixed thresholds compare as the stored float32 did
    given = np.asarray(given).astype(np.int64)
    _check(probs, given, method)
    if not len(given):
        return []
    quality = probs[np.arange(len(given)), given]
    if method != FIXED and len(np.unique(given)) < 2:
        log.info("label issues: all %d images have one given class; cleanlab needs two, so the fixed "
                 "rule screens them", len(given))
        method = FIXED
    if method == FIXED:
        outside = probs.copy()
        outside[np.arange(len(given)), given] = 0.0
        mask = fixed_rule(quality, outside.max(axis=1))
    else:
        mask = _cleanlab_mask(probs, given, method)
    hits = np.flatnonzero(mask)
    order = hits[np.lexsort([hits, quality[hits]])]
    return [(int(i), float(quality[i])) for i in order]


def write_label_issues(folder: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """`label_issues.csv` in `folder`: one row per likely label error, columns `LABEL_ISSUES_COLUMNS`."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LABEL_ISSUES_COLUMNS)
    for n, row in enumerate(rows, 1):
        missing = [c for c in LABEL_ISSUES_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"label issue row {n} lacks {missing} (columns: {', '.join(LABEL_ISSUES_COLUMNS)})")
        writer.writerow([f"{float(row[c]):.4f}" if c == "label_quality" else row[c] for c in LABEL_ISSUES_COLUMNS])
    return atomic_write_text(Path(folder) / LABEL_ISSUES_CSV, buf.getvalue())

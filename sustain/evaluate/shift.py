"""In-domain test beside each held-out source (`data.split.holdout_sources`), with counts and intervals.

Pure: it reads the two classification reports the final evaluation wrote
(``test_classification_report.json`` and ``ood_classification_report.json``)
and returns one row per population, for report.html and the model card.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Z95 = 1.959964  # two-sided 95% normal quantile


def wilson_interval(hits: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion hits/n (None when n is 0): unlike the normal
    approximation it stays inside 0–1 and is honest for small n and accuracies near 0 or 1."""
    if n <= 0:
        return None
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class ShiftRow:
    """One population: the in-domain test split, or one held-out source."""

    name: str
    held_out: bool
    n_fine: int
    accuracy: float | None
    interval: tuple[float, float] | None
    n_set: int
    set_accuracy: float | None
    set_interval: tuple[float, float] | None
    gap: float | None  # accuracy minus the in-domain test accuracy (negative: worse out of domain)


def _row(name: str, held_out: bool, acc: Any, n: Any, set_acc: Any, n_set: Any, base: float | None) -> ShiftRow:
    n, n_set = int(n or 0), int(n_set or 0)
    acc = float(acc) if acc is not None and n else None
    set_acc = float(set_acc) if set_acc is not None and n_set else None
    return ShiftRow(name=name, held_out=held_out, n_fine=n, accuracy=acc,
                    interval=wilson_interval(acc * n, n) if acc is not None else None, n_set=n_set,
                    set_accuracy=set_acc, set_interval=wilson_interval(set_acc * n_set, n_set) if set_acc is not None
                    else None, gap=None if acc is None or base is None else acc - base)


def shift_rows(test: Mapping[str, Any] | None, ood: Mapping[str, Any] | None) -> list[ShiftRow]:
    """In-domain test (all training sources), then each held-out source from the ood report.
    Empty when there is no ood report."""
    if not isinstance(ood, Mapping):
        return []
    rows = []
    base = None
    if isinstance(test, Mapping):
        base = test.get("accuracy") if test.get("n_fine") else None
        rows.append(_row("in-domain test", False, test.get("accuracy"), test.get("n_fine"), test.get("set_accuracy"),
                         test.get("n_set"), None))
    for source, s in (ood.get("per_source_accuracy") or {}).items():
        rows.append(_row(str(source), True, s.get("acc"), s.get("n_fine"), s.get("set_acc"), s.get("n_set"), base))
    return rows

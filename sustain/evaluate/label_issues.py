"""STUB of part B's module (issue #26, branch `labelissues`): the merge replaces this file.

Same interface as agreed; this stand-in screens with the fixed thresholds of the gallery
(given label <= SUSPECT_GIVEN_MAX while another class >= SUSPECT_OTHER_MIN), without cleanlab.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import LABEL_ISSUES_CSV
from ..utils import atomic_write_text
from .gallery import SUSPECT_GIVEN_MAX, SUSPECT_OTHER_MIN

LABEL_ISSUES_COLUMNS = ("path", "source", "given", "suggested", "label_quality", "rank")


def find_label_issues(probs: np.ndarray, given: np.ndarray, *, method: str | None = None) -> list[tuple[int, float]]:
    """(row index, label quality) of each likely mislabelled row, ranked worst first."""
    probs = np.asarray(probs, dtype=np.float64)
    given = np.asarray(given, dtype=np.int64)
    quality = probs[np.arange(len(given)), given]
    outside = probs.copy()
    outside[np.arange(len(given)), given] = 0.0
    hits = np.flatnonzero((quality <= SUSPECT_GIVEN_MAX) & (outside.max(axis=1) >= SUSPECT_OTHER_MIN))
    order = hits[np.lexsort([hits, quality[hits]])]
    return [(int(i), float(quality[i])) for i in order]


def write_label_issues(folder: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LABEL_ISSUES_COLUMNS)
    for row in rows:
        writer.writerow([f"{float(row[c]):.4f}" if c == "label_quality" else row[c] for c in LABEL_ISSUES_COLUMNS])
    return atomic_write_text(Path(folder) / LABEL_ISSUES_CSV, buf.getvalue())

"""The confusion matrix a reader can read at any width: the classes most involved in mistakes, as a table.

Thirty labels on a heat map do not fit a laptop screen, so the page shows the
`TOP_K` classes of the largest confusions, normalised per true class; columns are numbered like the rows, and every header and cell carries
its full names on hover. The full matrix stays in `confusion_matrix.png`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..utils import escape_html
from .plots import normalise_rows

TOP_K = 10


def focus_classes(confusion: np.ndarray, k: int = TOP_K) -> list[int]:
    """The classes of the largest confusions, pair by pair, until k are gathered (in class order):
    the top pairs always show both their classes."""
    c = np.asarray(confusion, dtype=np.float64)
    off = c - np.diag(np.diag(c))
    chosen: list[int] = []
    for cell in np.argsort(-off, axis=None, kind="stable"):
        t, p = divmod(int(cell), len(c))
        if off[t, p] <= 0 or len(chosen) >= k:
            break
        chosen += [i for i in (t, p) if i not in chosen and len(chosen) < k]
    return sorted(chosen)


def _cell(share: float, count: int, true: str, pred: str, diagonal: bool) -> str:
    alpha = min(max(share, 0.0), 1.0)
    colour = f"background:rgba({'46,125,50' if diagonal else '198,40,40'},{alpha:.2f})"
    text = "" if count == 0 else f"{100 * share:.0f}"
    ink = ";color:#fff" if alpha > 0.55 else ""
    tip = f"{true} → {pred}: {count} image(s), {100 * share:.1f}% of {true}"
    return f'<td class="cm" style="{colour}{ink}" title="{escape_html(tip)}">{text}</td>'


def confusion_table(confusion: np.ndarray, classes: Sequence[str], k: int = TOP_K) -> str:
    """The focus classes' rows and columns, as % of each true class (the diagonal green, mistakes red)."""
    idx = focus_classes(confusion, k)
    if not idx:
        return "<p>No confusions: every image landed on its true class.</p>"
    norm, counts = normalise_rows(confusion), np.asarray(confusion)
    head = "".join(f'<th class="cm" title="{escape_html(classes[j])}">{n}</th>' for n, j in enumerate(idx, 1))
    rows = "".join(
        f'<tr><th class="cm-row">{n} {escape_html(classes[i]).replace("_", "_<wbr>")}</th>'
        + "".join(_cell(norm[i, j], int(counts[i, j]), classes[i], classes[j], i == j) for j in idx) + "</tr>"
        for n, i in enumerate(idx, 1))
    note = (f'<p class="muted">The {len(idx)} classes of the largest confusions, of {len(classes)}; % of each true '
            "class (row) predicted as the column's class; hover for names and counts.</p>")
    return f'{note}<table class="cm-table"><tr><th>true \\ predicted</th>{head}</tr>{rows}</table>'

"""The data summary as two tables (per source, per class by split), the raw JSON one click away."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from ..utils import escape_html

SPLITS = ("train", "val", "test")


def source_rows(summary: Mapping[str, Any]) -> list[list[Any]]:
    """Per source: images kept, labels present, files dropped (label map, unreadable) and duplicates merged."""
    rows = []
    for name, s in (summary.get("sources") or {}).items():
        if not isinstance(s, Mapping):
            continue
        rows.append([name, s.get("images", 0), s.get("labels", "n/a"),
                     s.get("dropped", 0) + s.get("unmapped", 0), s.get("corrupt", 0),
                     s.get("duplicates_merged", 0) + s.get("conflicts_dropped", 0)])
    return rows


def class_rows(summary: Mapping[str, Any]) -> list[list[Any]]:
    """Per class (and set label): images in each split and in all, smallest total first."""
    labels = {**(summary.get("classes") or {}), **(summary.get("set_labels") or {})}
    rows = [[name, *(int(v.get(s, 0)) for s in SPLITS), int(v.get("total", 0))]
            for name, v in labels.items() if isinstance(v, Mapping)]
    return sorted(rows, key=lambda r: (r[-1], r[0]))


def data_summary_html(summary: Mapping[str, Any], table: Callable[..., str], text: Callable[[str], str]) -> str:
    """`table(header, rows)` renders; `text` makes the raw JSON portable (no absolute root)."""
    total, splits = summary.get("total_images"), summary.get("splits") or {}
    head = (f"<p>{escape_html(total)} images: " + ", ".join(f"{escape_html(k)} {escape_html(v)}" for k, v in splits.items())
            + f'. Manifest hash <code title="{escape_html(summary.get("manifest_hash", ""))}">'
              f'{escape_html(str(summary.get("manifest_hash", ""))[:12])}…</code></p>')
    out = head + "<h3>Per source</h3>" + table(
        ["source", "images", "labels", "dropped or unmapped", "unreadable", "duplicates merged"], source_rows(summary))
    rows = class_rows(summary)
    if rows:
        out += (f"<details><summary>Per class: images by split ({len(rows)} labels, smallest first)</summary>"
                + table(["label", *SPLITS, "total"], rows) + "</details>")
    raw = text(json.dumps(summary, indent=1, default=str))
    return out + f"<details><summary>data_summary.json (raw)</summary><pre>{escape_html(raw)}</pre></details>"

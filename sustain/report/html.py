"""`report.html`'s page: the sections rendered from the run's artifacts, and the small HTML helpers.

One self-contained file: images inlined as base64, styles inline, no scripts,
no request leaves the file (a Content-Security-Policy says so to the browser).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluate.metrics import top_confusions
from ..utils import escape_html
from .gallery_html import Gallery
from .plots import history_series, normalise_rows

TOP_CONFUSIONS = 10
WORST_SHOWN = 5


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left;vertical-align:top}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{background:#fff8e1;border-left:4px solid #f0ad4e;padding:.4rem .8rem;margin:.3rem 0}
.ok{color:#2e7d32} .bad{color:#c62828} img{max-width:100%;border:1px solid #eee} .muted{color:#777}
details{margin:.5rem 0} pre{background:#f7f7f7;padding:.5rem;white-space:pre-wrap;overflow-wrap:anywhere}
table{display:block;max-width:100%;overflow-x:auto} td{overflow-wrap:anywhere}
"""
# The page may load nothing but its own inline styles and data: images; a browser enforces it.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "✓" if value else "✗"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{100 * value:.2f}%" if pct else f"{value:.4g}"
    return str(value)


def html_table(header: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> str:
    head = "<tr>" + "".join(f"<th>{escape_html(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{escape_html(c)}</td>' if isinstance(c, (int, float)) or (isinstance(c, str) and c.endswith("%"))
            else f"<td>{escape_html(c)}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table>{head}{body}</table>"


def _value_html(value: Any, depth: int = 0) -> str:
    """Any JSON value as readable HTML: mappings as key/value tables, lists of records as tables."""
    if isinstance(value, Mapping):
        if not value:
            return '<span class="muted">(empty)</span>'
        if depth >= 3:
            return f"<pre>{escape_html(json.dumps(value, indent=1, default=str))}</pre>"
        rows = "".join(f"<tr><th>{escape_html(k)}</th><td>{_value_html(v, depth + 1)}</td></tr>" for k, v in value.items())
        return f"<table>{rows}</table>"
    if isinstance(value, list):
        if value and all(isinstance(v, Mapping) for v in value) and depth < 3:
            keys = list(dict.fromkeys(k for v in value for k in v))
            return html_table(keys, [[_fmt(v.get(k)) if not isinstance(v.get(k), (Mapping, list)) else
                                  json.dumps(v.get(k), default=str) for k in keys] for v in value])
        if any(isinstance(v, (Mapping, list)) for v in value):
            return f"<pre>{escape_html(json.dumps(value, indent=1, default=str))}</pre>"
        if len(value) > 40:
            return escape_html(", ".join(_fmt(v) for v in value[:40])) + f' <span class="muted">… ({len(value)} items)</span>'
        return escape_html(", ".join(_fmt(v) for v in value)) or '<span class="muted">(none)</span>'
    return escape_html(_fmt(value))


def _img(title: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<h3>{escape_html(title)}</h3><img alt="{escape_html(title)}" src="data:image/png;base64,{data}">'


def _best_epoch(history: Mapping[str, Any], report: Mapping[str, Any] | None) -> int | None:
    """The checkpoint's epoch as the final evaluation recorded it, else the best val macro-F1."""
    ckpt = (report or {}).get("checkpoint") or {}
    if isinstance(ckpt.get("epoch"), int):
        return ckpt["epoch"]
    f1 = history_series(history, "val_macro_f1")
    if not f1 or all(np.isnan(f1)):
        return None
    epochs = history_series(history, "epoch") or list(range(1, len(f1) + 1))
    return int(epochs[int(np.nanargmax(f1))])


def _summary_section(run: Any, history: Any, val: Any, classes: Sequence[str] | None) -> str:
    rows: list[tuple[str, Any]] = []
    if isinstance(run, Mapping):
        cfg = run.get("config") or {}
        model = (cfg.get("model") or {}).get("name") if isinstance(cfg, Mapping) else None
        device = run.get("device")
        if isinstance(device, Mapping):  # {"type", "name", "precision", ...}
            device = ", ".join(str(device[k]) for k in ("type", "name", "precision") if device.get(k))
        for label, value in (("status", run.get("status")), ("stop reason", run.get("stop_reason")),
                             ("model", run.get("model_name") or model), ("device", device),
                             ("seed", run.get("seed")), ("manifest hash", run.get("manifest_hash"))):
            if value is not None:
                rows.append((label, value))
    if classes:
        rows.append(("classes", f"{len(classes)}"))
    if isinstance(history, Mapping) and history:
        epochs = len(history.get("val_acc") or history.get("epoch") or [])
        rows.append(("epochs run", epochs))
        best = _best_epoch(history, val if isinstance(val, Mapping) else None)
        if best is not None:
            rows.append(("best epoch", best))
            eps = [int(e) for e in history_series(history, "epoch") if not np.isnan(e)] or list(range(1, epochs + 1))
            if best in eps:
                i = eps.index(best)
                for key in ("val_acc", "val_macro_f1", "val_loss"):
                    col = history_series(history, key)
                    if i < len(col):
                        rows.append((f"{key} at best epoch", _fmt(col[i], pct=key == "val_acc")))
                if isinstance(val, Mapping) and i < len(history_series(history, "val_acc")):
                    hist_acc, final_acc = history_series(history, "val_acc")[i], val.get("accuracy")
                    if isinstance(final_acc, (int, float)) and not np.isnan(hist_acc):
                        same = abs(hist_acc - final_acc) < 1e-4
                        rows.append(("final val accuracy (best weights)",
                                     f"{_fmt(float(final_acc), pct=True)} "
                                     + ("✓ matches the best epoch" if same else "≠ history (EMA or a different val set?)")))
    body = html_table(None, rows) if rows else '<p class="muted">No summary available.</p>'
    if isinstance(run, Mapping):
        for key in ("timings", "versions"):
            if key in run:
                body += f"<h3>{escape_html(key.capitalize())}</h3>" + _value_html(run[key])
        if run["checklist"]:
            body += "<h3>Success criteria checklist</h3>" + _checklist_html(run["checklist"])
        rest = {k: v for k, v in run.items() if k not in ("timings", "versions", "checklist", "health", "data_summary")}
        body += f"<details><summary>Everything in run.json</summary>{_value_html(rest)}</details>"
    return body


def _checklist_html(items: Any) -> str:
    if not isinstance(items, list):
        return _value_html(items)
    lines = []
    for it in items:
        if not isinstance(it, Mapping):
            lines.append(f"<li>{escape_html(it)}</li>")
            continue
        ok = bool(it.get("passed"))
        lines.append(f'<li class="{"ok" if ok else "bad"}">{"✓" if ok else "✗"} {escape_html(it.get("item", it.get("id", "")))}'
                     f' <span class="muted">{escape_html(it.get("detail", ""))}</span></li>')
    return "<ul>" + "".join(lines) + "</ul>"


def _health_section(run: Any, history: Any) -> str:
    parts = []
    if isinstance(run, Mapping):
        warnings = run["health"].get("trend_warnings")
        health = {k: v for k, v in run["health"].items() if k != "trend_warnings"}
        if health:
            parts.append("<h3>Summary</h3>" + _value_html(health))
        if warnings:
            parts.append("<h3>Trend warnings</h3>" + _value_html(warnings))
    if isinstance(history, Mapping) and history:
        n = max((len(v) for v in history.values() if isinstance(v, list)), default=0)
        epochs = history.get("epoch") or list(range(1, n + 1))
        cols = [("epoch", epochs), ("skipped", history.get("skipped")), ("health", history.get("health")),
                ("epoch seconds", history.get("epoch_seconds")), ("images/s", history.get("images_per_second"))]
        cols = [(name, col) for name, col in cols if col]
        rows = [[_fmt(col[i], pct=name == "skipped") if i < len(col) and not isinstance(col[i], (Mapping, list))
                 else json.dumps(col[i], default=str) if i < len(col) else "" for name, col in cols] for i in range(n)]
        parts.append("<h3>Per epoch</h3>" + html_table([c[0] for c in cols], rows))
    return "".join(parts) or '<p class="muted">No health record (run.json and metrics_history.json are missing).</p>'


def _worst_section(val: Mapping[str, Any], classes: Sequence[str]) -> str:
    f1, support = per_class(val, classes)
    seen = sorted((i for i in range(len(classes)) if support[i] > 0), key=lambda i: (f1[i], i))
    rows = [[classes[i], f"{f1[i]:.4f}", float(val[classes[i]].get("precision", 0)),
             float(val[classes[i]].get("recall", 0)), support[i]] for i in seen[:WORST_SHOWN]]
    out = html_table(["class", "F1", "precision", "recall", "support"], [[_fmt(c) for c in r] for r in rows])
    absent = [classes[i] for i in range(len(classes)) if support[i] == 0]
    if absent:
        out += f'<p class="note">{len(absent)} class(es) have no val samples (support 0): {escape_html(", ".join(absent))}</p>'
    return out


def _confusion_section(confusion: np.ndarray | None, classes: Sequence[str] | None) -> str:
    if confusion is None or not classes or confusion.shape != (len(classes), len(classes)):
        return '<p class="muted">No confusion matrix.</p>'
    norm = normalise_rows(confusion)
    pairs = top_confusions(confusion, classes, k=TOP_CONFUSIONS)
    rows = [[t, p, n, f"{100 * norm[classes.index(t), classes.index(p)]:.1f}%"] for t, p, n in pairs]
    if not rows:
        return "<p>No confusions: every val image landed on its true class.</p>"
    return html_table(["true class", "predicted as", "images", "share of true class"], rows)


def _evaluation_section(reports: Mapping[str, Any]) -> str:
    present = {k: r for k, r in reports.items() if isinstance(r, Mapping)}
    if not present:
        return '<p class="muted">No final evaluation yet (classification_report.json is missing).</p>'
    metrics = [("images scored (fine labels)", "n_fine", False), ("set-labelled images", "n_set", False),
               ("unreadable images", "failed", False), ("accuracy", "accuracy", True),
               ("macro-F1 (classes seen)", "macro_f1", False), ("top-5 accuracy", "top5_accuracy", True),
               ("set accuracy", "set_accuracy", True), ("bin accuracy", None, True),
               ("expected calibration error", "expected_calibration_error", False)]
    rows = []
    for label, key, pct in metrics:
        cells = []
        for r in present.values():
            v = (r.get("bin_accuracy") or {}).get("acc") if key is None else r.get(key)
            cells.append(_fmt(v, pct=pct))
        rows.append([label, *cells])
    out = html_table(["", *present], rows)

    bins = sorted({b for r in present.values() for b in ((r.get("bin_accuracy") or {}).get("per_bin") or {})})
    if bins:
        out += "<h3>Bin accuracy (SPEC §3)</h3>" + html_table(
            ["bin", *(f"{s} acc (n)" for s in present)],
            [[b, *(f"{_fmt(pb.get('acc'), True)} ({pb.get('n', 0)})" for pb in
                   (((r.get("bin_accuracy") or {}).get("per_bin") or {}).get(b, {}) for r in present.values()))]
             for b in bins])
    sources = list(dict.fromkeys(s for r in present.values() for s in (r.get("per_source_accuracy") or {})))
    if sources:
        def cell(r: Mapping[str, Any], s: str) -> str:
            ps = (r.get("per_source_accuracy") or {}).get(s) or {}
            text = f"{_fmt(ps.get('acc'), True)} (n={ps.get('n_fine', 0)})"
            if ps.get("n_set"):
                text += f"; set {_fmt(ps.get('set_acc'), True)} (n={ps['n_set']})"
            return text
        out += "<h3>Per-source accuracy</h3>" + html_table(["source", *present], [[s, *(cell(r, s) for r in present.values())]
                                                                             for s in sources])
    return out


def render_html(*, run_dir: Path, history: Any, run: Any, data_summary: Any, reports: Mapping[str, Any],
                confusions: Mapping[str, np.ndarray | None], classes: Sequence[str] | None,
                images: Mapping[str, Path], notes: Sequence[str], gallery: Gallery | None = None) -> str:
    """The whole report page as one string (pure apart from reading the PNGs it inlines)."""
    val = reports.get("val")
    title = f"Sustain run report — {run_dir.resolve().name}"
    sections = [f"<h1>{escape_html(title)}</h1>",
                f'<p class="muted">Built {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from the artifacts in {escape_html(run_dir.resolve())}</p>']
    sections += [f'<p class="note">{escape_html(n)}</p>' for n in notes]
    sections.append("<h2>Run summary</h2>" + _summary_section(run, history, val, classes))
    sections.append("<h2>Final evaluation (best weights)</h2>" + _evaluation_section(reports))
    if isinstance(val, Mapping) and classes:
        sections.append("<h2>Worst classes (val)</h2>" + _worst_section(val, classes))
    sections.append("<h2>Top confusions (val)</h2>" + _confusion_section(confusions.get("val"), classes))
    if confusions.get("test") is not None:
        sections.append("<h3>Top confusions (test)</h3>" + _confusion_section(confusions["test"], classes))
    if gallery is not None:
        sections.append(gallery.html)
    sections.append("<h2>Plots</h2>" + ("".join(_img(t, p) for t, p in images.items()) or
                                         '<p class="muted">No plots: the artifacts they need are missing.</p>'))
    sections.append("<h2>Health record</h2>" + _health_section(run, history))
    summary = data_summary
    if summary is None and isinstance(run, Mapping):
        summary = run.get("data_summary")
    sections.append("<h2>Data summary</h2>" + (_value_html(summary) if summary is not None else
                                                 '<p class="muted">data_summary.json not found.</p>'))
    body = "\n".join(sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape_html(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def per_class(report: Mapping[str, Any], classes: Sequence[str]) -> tuple[list[float], list[int]]:
    rows = [report.get(c) or {} for c in classes]
    return [float(r.get("f1-score", 0.0)) for r in rows], [int(r.get("support", 0)) for r in rows]

"""`report.html`'s page: the sections rendered from the run's artifacts, and the small HTML helpers.

One self-contained file: images inlined as base64, styles inline, no scripts,
no request leaves the file (a Content-Security-Policy says so to the browser).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluate import shift_rows, top_confusions
from ..utils import escape_html
from ..utils import wrap_html as wrap
from .confusion_html import confusion_table
from .data_tables import data_summary_html
from .gallery_html import Gallery
from .glance import glance_lines
from .paths import PathView
from .plots import history_series

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
table{display:block;max-width:100%;overflow-x:auto} td,th{overflow-wrap:normal;word-break:normal}
.glance{background:#f4f8fb;border-left:4px solid #1f77b4;padding:.5rem 1rem;margin:1rem 0}
.glance li{margin:.15rem 0} .cm-table td.cm,.cm-table th.cm{padding:.15rem .25rem;min-width:1.6rem;text-align:center;
font-size:.8rem} .cm-table th.cm-row{font-weight:normal;font-size:.8rem;max-width:12rem}
@media (max-width:500px){body{margin:1rem auto;padding:0 .5rem} td,th{padding:.2rem .3rem}
 .wide,.wide tbody,.wide tr,.wide td{display:block} .wide tr:first-child{display:none} .wide tr{border-top:2px solid #ddd}
 .wide td{border:0;text-align:left} .wide td::before{content:attr(data-label) ": ";font-weight:600}
 .cm-table td.cm,.cm-table th.cm{min-width:1.1rem;padding:.1rem;font-size:.65rem} .cm-table th.cm-row{font-size:.7rem}}
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


def _td(value: Any, label: str) -> str:
    attr = f' data-label="{escape_html(label)}"' if label else ""
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.endswith("%")):
        return f'<td class="num"{attr}>{escape_html(value)}</td>'
    return f"<td{attr}>{wrap(value)}</td>"


def html_table(header: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> str:
    """A table; one of more than three columns stacks its cells, each labelled, on a phone (`.wide`)."""
    head = "<tr>" + "".join(f"<th>{wrap(h)}</th>" for h in header) + "</tr>" if header else ""
    labels = list(header or [])
    body = "".join("<tr>" + "".join(_td(c, labels[i] if i < len(labels) else "") for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    wide = ' class="wide"' if len(labels) > 3 else ""
    return f"<table{wide}>{head}{body}</table>"


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


def img_html(title: str, path: Path) -> str:
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


def _summary_rows(run: Any, classes: Sequence[str] | None) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    if isinstance(run, Mapping):
        cfg = run.get("config") or {}
        model = (cfg.get("model") or {}).get("name") if isinstance(cfg, Mapping) else None
        device = run.get("device")
        if isinstance(device, Mapping):  # {"type", "name", "precision", ...}
            device = ", ".join(str(device[k]) for k in ("type", "name", "precision") if device.get(k))
        manifest = run.get("manifest_hash")
        for label, value in (("status", run.get("status")), ("stop reason", run.get("stop_reason")),
                             ("model", run.get("model_name") or model), ("device", device),
                             ("seed", run.get("seed")), ("manifest hash", f"{manifest[:12]}…" if manifest else None),
                             ("train time (s)", (run.get("timings") or {}).get("train_seconds"))):
            if value is not None:
                rows.append((label, value))
    if classes:
        rows.append(("classes", f"{len(classes)}"))
    return rows


def _best_rows(history: Any, val: Any) -> list[tuple[str, Any]]:
    if not isinstance(history, Mapping) or not history:
        return []
    epochs = len(history.get("val_acc") or history.get("epoch") or [])
    rows: list[tuple[str, Any]] = [("epochs run", epochs)]
    best = _best_epoch(history, val if isinstance(val, Mapping) else None)
    eps = [int(e) for e in history_series(history, "epoch") if not np.isnan(e)] or list(range(1, epochs + 1))
    if best is None or best not in eps:
        return rows
    rows.append(("best epoch", best))
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
    return rows


def _summary_section(run: Any, history: Any, val: Any, classes: Sequence[str] | None,
                     text: Callable[[str], str] = str) -> str:
    rows = _summary_rows(run, classes) + _best_rows(history, val)
    body = html_table(None, rows) if rows else '<p class="muted">No summary available.</p>'
    if isinstance(run, Mapping):
        if run["checklist"]:
            body += "<h3>Success criteria checklist</h3>" + _checklist_html(run["checklist"])
        rest = {k: v for k, v in run.items() if k not in ("checklist", "health", "data_summary")}
        raw = text(json.dumps(rest, indent=1, default=str))  # the run's own paths, named by their root
        body += f"<details><summary>Everything in run.json</summary><pre>{escape_html(raw)}</pre></details>"
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


def _health_section(run: Any, history: Any, text: Callable[[str], str] = str) -> str:
    parts = []
    if isinstance(run, Mapping):
        health = run["health"]
        totals = health.get("totals") or {}
        if totals:
            parts.append("<h3>Totals</h3>" + html_table(list(totals), [list(totals.values())]))
        if health.get("escalations"):
            parts.append("<h3>Escalations</h3>" + html_table(None, [[json.dumps(e, default=str)]
                                                                     for e in health["escalations"]]))
        if health.get("trend_warnings"):
            parts.append("<h3>Trend warnings</h3>" + _value_html(health["trend_warnings"]))
    if isinstance(history, Mapping) and history:
        n = max((len(v) for v in history.values() if isinstance(v, list)), default=0)
        epochs = history.get("epoch") or list(range(1, n + 1))
        cols = [("epoch", epochs), ("skipped", history.get("skipped")), ("health", history.get("health")),
                ("epoch seconds", history.get("epoch_seconds")), ("images/s", history.get("images_per_second"))]
        cols = [(name, col) for name, col in cols if col]
        rows = [[_fmt(col[i], pct=name == "skipped") if i < len(col) and not isinstance(col[i], (Mapping, list))
                 else json.dumps(col[i], default=str) if i < len(col) else "" for name, col in cols] for i in range(n)]
        parts.append(f"<details><summary>Per epoch ({n} epochs)</summary>" + html_table([c[0] for c in cols], rows)
                     + "</details>")
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


def _confusion_section(confusion: np.ndarray | None, classes: Sequence[str] | None,
                       image: Path | None = None) -> str:
    """The most-confused classes as a readable table; the full matrix as an image one click away."""
    if confusion is None or not classes or confusion.shape != (len(classes), len(classes)):
        return '<p class="muted">No confusion matrix.</p>'
    out = confusion_table(confusion, classes)
    if image is not None:
        out += "<details><summary>The full matrix (image)</summary>" + img_html("Confusion matrix (val)", image) + "</details>"
    return out


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
        out += "<details><summary>Bin accuracy (SPEC §3)</summary>" + html_table(
            ["bin", *(f"{s} acc (n)" for s in present)],
            [[b, *(f"{_fmt(pb.get('acc'), True)} ({pb.get('n', 0)})" for pb in
                   (((r.get("bin_accuracy") or {}).get("per_bin") or {}).get(b, {}) for r in present.values()))]
             for b in bins]) + "</details>"
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


def _shift_section(test: Any, ood: Any) -> str:
    """In-domain test beside each held-out source (data.split.holdout_sources)."""
    rows = shift_rows(test, ood)
    if not rows:
        return ""

    def interval(bounds: tuple[float, float] | None) -> str:
        return "n/a" if bounds is None else f"{_fmt(bounds[0], True)} – {_fmt(bounds[1], True)}"

    table = html_table(
        ["", "fine images", "accuracy", "95% interval (Wilson)", "gap to in-domain test", "set images", "set accuracy",
         "95% interval"],
        [[f"{r.name}{' (held out)' if r.held_out else ''}", r.n_fine, _fmt(r.accuracy, True), interval(r.interval),
          "" if r.gap is None else f"{100 * r.gap:+.1f} points", r.n_set, _fmt(r.set_accuracy, True),
          interval(r.set_interval)] for r in rows])
    return ("<h2>In-domain test and held-out sources</h2>"
            '<p class="muted">The held-out sources (data.split.holdout_sources) were never trained on, and their '
            "near duplicates were removed from the other sources: their accuracy is what to expect at a new site "
            "that looks like them. In-domain test comes from the training sources.</p>" + table)


def _glance_section(run: Any, reports: Mapping[str, Any], classes: Sequence[str] | None,
                    confusion: np.ndarray | None, gallery: Gallery | None) -> str:
    pairs = top_confusions(confusion, classes, k=1) if confusion is not None and classes and \
        confusion.shape == (len(classes), len(classes)) else []
    n_suspects = len(gallery.suspects) if gallery is not None else 0
    lines = glance_lines(run if isinstance(run, Mapping) else None, reports, classes, n_suspects,
                         pairs[0] if pairs else None)
    return '<ul class="glance">' + "".join(f"<li>{wrap(x)}</li>" for x in lines) + "</ul>"


def _plots_section(images: Mapping[str, Path]) -> str:
    shown = {t: p for t, p in images.items() if not t.startswith("Confusion")}  # the matrix has its own section
    if not shown:
        return '<p class="muted">No plots: the artifacts they need are missing.</p>'
    first, *rest = shown.items()
    return img_html(*first) + "".join(f"<details><summary>{escape_html(t)}</summary>{img_html(t, p)}</details>" for t, p in rest)


def render_html(*, run_dir: Path, history: Any, run: Any, data_summary: Any, reports: Mapping[str, Any],
                confusions: Mapping[str, np.ndarray | None], classes: Sequence[str] | None,
                images: Mapping[str, Path], notes: Sequence[str], gallery: Gallery | None = None,
                view: PathView | None = None, extra_sections: Sequence[str] = ()) -> str:
    """The whole report page as one string (pure apart from reading the PNGs it inlines). Files are
    named relative to the data root or the run folder (`view`): the page can be moved or sent."""
    view = view or PathView.of(run_dir, run if isinstance(run, Mapping) else {})
    val = reports.get("val")
    title = f"Sustain run report — {run_dir.resolve().name}"
    sections = [f"<h1>{escape_html(title)}</h1>",
                _glance_section(run, reports, classes, confusions.get("val"), gallery),
                f'<p class="muted">Built {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from the artifacts in '
                "this run folder; files are named relative to the data root or the run folder.</p>"]
    sections += [f'<p class="note">{escape_html(view.text(n))}</p>' for n in notes]
    sections.append("<h2>Run summary</h2>" + _summary_section(run, history, val, classes, view.text))
    sections.append("<h2>Final evaluation (best weights)</h2>" + _evaluation_section(reports))
    sections.append(_shift_section(reports.get("test"), reports.get("ood")))
    if isinstance(val, Mapping) and classes:
        sections.append("<h2>Worst classes (val)</h2>" + _worst_section(val, classes))
    sections.append("<h2>Confusions (val)</h2>" + _confusion_section(confusions.get("val"), classes,
                                                                     images.get("Confusion matrix (val)")))
    sections.extend(extra_sections)  # self-contained sections (calibration): each brings its own heading
    if gallery is not None:
        sections.append(gallery.html)
    sections.append("<h2>Plots</h2>" + _plots_section(images))
    sections.append("<h2>Health record</h2>" + _health_section(run, history, view.text))
    summary = data_summary
    if summary is None and isinstance(run, Mapping):
        summary = run.get("data_summary")
    sections.append("<h2>Data summary</h2>" + (data_summary_html(summary, html_table, view.text)
                                                 if isinstance(summary, Mapping) else
                                                 '<p class="muted">data_summary.json not found.</p>'))
    return page(title, "\n".join(sections))


def page(title: str, body: str) -> str:
    """A self-contained HTML page: the report's styles, and a policy that loads nothing from outside."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape_html(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def per_class(report: Mapping[str, Any], classes: Sequence[str]) -> tuple[list[float], list[int]]:
    rows = [report.get(c) or {} for c in classes]
    return [float(r.get("f1-score", 0.0)) for r in rows], [int(r.get("support", 0)) for r in rows]

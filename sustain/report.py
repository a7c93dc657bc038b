"""Plots and `report.html`, rebuilt from a run folder's artifacts alone (`sustain report`).

Reads (each optional; a missing one is named in the HTML instead of failing):
``metrics_history.json``, ``confusion_matrix.npy``, ``classification_report.json``
and their ``test_*`` twins, ``run.json``, ``data_summary.json`` and the
per-sample ``predictions_*.npz`` (the error gallery, `sustain.gallery_html`).
Writes ``training_curves.png``, ``confusion_matrix.png``, ``per_class_f1.png``,
``suspect_labels.csv`` and ``report.html`` (one self-contained file: images
inlined as base64, styles inline, no scripts, no request leaves the file).

Figure sizes are fixed by the constants below (pixels = inches × DPI), so a
report looks the same on every machine; the confusion matrix grows with the
number of classes so 30 labels stay legible.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import (
    CONFUSION_PNG,
    CURVES_PNG,
    DATA_SUMMARY,
    F1_PNG,
    HISTORY,
    REPORT_HTML,
    RUN,
    SUSPECTS_CSV,
    TEST_CONFUSION,
    TEST_REPORT,
    VAL_CONFUSION,
    VAL_REPORT,
    ArtifactError,
    DataSummary,
    History,
    ModelMeta,
    Record,
    RunRecord,
)
from .errors import UsageError
from .gallery import predictions_file, write_suspects_csv
from .gallery_html import Gallery, build_gallery
from .metrics import top_confusions
from .utils import atomic_write, atomic_write_text, escape_html, finite_float

log = logging.getLogger("sustain.report")

DPI = 100
CURVES_FIGSIZE = (15.0, 8.0)
TOP_CONFUSIONS = 10
WORST_SHOWN = 5

ARTIFACTS = (HISTORY, VAL_CONFUSION, VAL_REPORT, TEST_CONFUSION, TEST_REPORT, RUN, DATA_SUMMARY,
             predictions_file("val"))


def confusion_figsize(num_classes: int) -> tuple[float, float]:
    side = min(max(6.0, 0.38 * num_classes + 3.0), 30.0)
    return side, side


def per_class_figsize(num_classes: int) -> tuple[float, float]:
    return 10.0, min(max(4.0, 0.3 * num_classes + 1.5), 40.0)


def new_figure(figsize: tuple[float, float]):
    # A bare Figure, not pyplot: no global backend switch (a notebook keeps its inline
    # plots) and nothing to close; savefig renders PNG with Agg.
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=DPI)


def history_series(history: Mapping[str, Any], key: str) -> list[float]:
    """A history column as floats, NaN where an entry is missing or non-finite (a gap in the plot)."""
    return [np.nan if (v := finite_float(x)) is None else v for x in history.get(key) or []]


def _save(fig: Any, path: Path) -> Path:
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=DPI))
    return path


# --------------------------------------------------------------------------- plots


HEALTH_COLOURS = {"healthy": "tab:green", "warning": "tab:orange", "critical": "tab:red"}


def plot_training_curves(history: Mapping[str, Any], path: str | Path, warn_pct: float | None = None) -> Path:
    """Loss, accuracy, macro-F1, LR and skipped steps per epoch (fractions shown as %)."""
    n = max((len(v) for v in history.values() if isinstance(v, list)), default=0)
    epochs = history_series(history, "epoch") or [float(i + 1) for i in range(n)]
    fig = new_figure(CURVES_FIGSIZE)
    axes = fig.subplots(2, 3)

    def line(ax, key: str, label: str, scale: float = 1.0) -> None:
        values = history_series(history, key)
        if values:
            ax.plot(epochs[: len(values)], [v * scale for v in values], marker="o", label=label)

    ax = axes[0, 0]
    line(ax, "train_loss", "train")
    line(ax, "val_loss", "val")
    ax.set(title="Loss", xlabel="epoch")
    ax = axes[0, 1]
    line(ax, "train_acc", "train", 100)
    line(ax, "val_acc", "val", 100)
    ax.set(title="Accuracy (%)", xlabel="epoch")
    ax = axes[0, 2]
    line(ax, "val_macro_f1", "val")
    ax.set(title="Val macro-F1", xlabel="epoch", ylim=(0, 1))
    ax = axes[1, 0]
    line(ax, "lr", "lr")
    if any(v > 0 for v in history_series(history, "lr") if not np.isnan(v)):
        ax.set_yscale("log")
    ax.set(title="Learning rate (end of epoch)", xlabel="epoch")
    ax = axes[1, 1]
    skipped = [0.0 if np.isnan(v) else 100 * v for v in history_series(history, "skipped")]
    # Each bar wears the verdict the engine gave that epoch under the run's own guard thresholds.
    verdicts = list(history.get("health") or [])
    colours = [HEALTH_COLOURS.get(verdicts[i] if i < len(verdicts) else "", "tab:gray") for i in range(len(skipped))]
    ax.bar(epochs[: len(skipped)], skipped, color=colours)
    if warn_pct is not None:
        ax.axhline(warn_pct, color="tab:orange", linestyle="--", linewidth=1)
    ax.set(title="Skipped steps (%)", xlabel="epoch", ylim=(0, max([25.0, *skipped])))
    ax = axes[1, 2]
    line(ax, "images_per_second", "images/s")
    ax.set(title="Throughput (images/s)", xlabel="epoch")

    from matplotlib.ticker import MaxNLocator

    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0] and ax is not axes[1, 0] and ax is not axes[1, 2]:
            ax.legend()
        if not ax.has_data():
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.suptitle("Training curves")
    fig.tight_layout()
    return _save(fig, Path(path))


def normalise_rows(confusion: np.ndarray) -> np.ndarray:
    """Each row divided by its total (recall per true class); a class without samples stays 0."""
    c = np.asarray(confusion, dtype=np.float64)
    totals = c.sum(axis=1, keepdims=True)
    return np.divide(c, totals, out=np.zeros_like(c), where=totals > 0)


def plot_confusion_matrix(confusion: np.ndarray, classes: Sequence[str], path: str | Path,
                          title: str = "Confusion matrix (val, best weights)") -> Path:
    """Row-normalised heat map; true classes on rows; cells ≥ 1% annotated."""
    norm = normalise_rows(confusion)
    k = len(classes)
    fig = new_figure(confusion_figsize(k))
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    font = 9 if k <= 15 else 7
    ax.set_xticks(range(k), labels=classes, rotation=90, fontsize=font)
    ax.set_yticks(range(k), labels=[f"{c} ({int(n)})" for c, n in zip(classes, np.asarray(confusion).sum(axis=1), strict=True)],
                  fontsize=font)
    ax.set(xlabel="predicted", ylabel="true (support)", title=title)
    for i, j in zip(*np.nonzero(norm >= 0.01), strict=True):
        ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=font - 1,
                color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_per_class_f1(f1: Sequence[float], support: Sequence[int | None], classes: Sequence[str],
                      path: str | Path) -> Path:
    """Horizontal bars, worst at the top; classes without val samples drawn grey and labelled."""
    from matplotlib import colormaps

    k = len(classes)
    order = sorted(range(k), key=lambda i: (support[i] == 0, f1[i], i), reverse=True)
    fig = new_figure(per_class_figsize(k))
    ax = fig.subplots()
    colours = ["lightgrey" if support[i] == 0 else colormaps["RdYlGn"](f1[i]) for i in order]
    ax.barh(range(k), [f1[i] for i in order], color=colours)
    labels = [f"{classes[i]} (n={support[i]})" if support[i] is not None else classes[i] for i in order]
    ax.set_yticks(range(k), labels=labels, fontsize=8 if k > 15 else 10)
    for y, i in enumerate(order):
        text = "no val samples" if support[i] == 0 else f"{f1[i]:.2f}"
        ax.text(min(f1[i], 1.0) + 0.01, y, text, va="center", fontsize=7)
    ax.set(xlim=(0, 1.12), xlabel="F1 (val, best weights)", title="Per-class F1")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(path))


# --------------------------------------------------------------------------- reading artifacts


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        notes.append(f"{path.name} not found" + (" (the run may still be in progress)" if path.name == RUN else ""))
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        notes.append(f"{path.name} could not be read: {exc}")
        return None


def _read_record(record: type[Record], run_dir: Path, notes: list[str]) -> dict[str, Any] | None:
    """A record's file as its checked dict; missing or unreadable is a note on the page, not a failure."""
    if not (run_dir / record.FILE).is_file():
        notes.append(f"{record.FILE} not found" + (" (the run may still be in progress)" if record.FILE == RUN else ""))
        return None
    try:
        return record.read(run_dir).to_dict()
    except ArtifactError as exc:
        notes.append(f"{record.FILE} could not be read: {exc.message}")
        return None


def _warn_pct(run: Mapping[str, Any] | None) -> float | None:
    """The run's guards.warn_pct: the dashed line on the skipped-steps plot."""
    value = ((run or {}).get("config") or {}).get("guards", {}).get("warn_pct")
    return finite_float(value)


def _read_npy(path: Path, notes: list[str]) -> np.ndarray | None:
    if not path.is_file():
        notes.append(f"{path.name} not found")
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name} could not be read: {exc}")
        return None


def _classes(*sources: Any) -> list[str] | None:
    """The class list from the first artifact that records it."""
    for src in sources:
        if isinstance(src, Mapping) and isinstance(src.get("classes"), list):
            return [str(c) for c in src["classes"]]
    return None


def _per_class(report: Mapping[str, Any], classes: Sequence[str]) -> tuple[list[float], list[int]]:
    rows = [report.get(c) or {} for c in classes]
    return [float(r.get("f1-score", 0.0)) for r in rows], [int(r.get("support", 0)) for r in rows]


# --------------------------------------------------------------------------- build


def build_report(run_dir: str | Path) -> Path:
    """Rebuild the three plots and report.html in `run_dir`; returns the HTML path."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise UsageError(f"Run folder not found: {run_dir}", "pass the output_dir of a training run")
    if not any((run_dir / name).is_file() for name in ARTIFACTS):
        raise UsageError(f"No run artifacts in {run_dir} (looked for {', '.join(ARTIFACTS)})",
                         "pass the output_dir of a training run")
    notes: list[str] = []
    history = _read_record(History, run_dir, notes)
    run = _read_record(RunRecord, run_dir, notes)
    data_summary = _read_record(DataSummary, run_dir, notes)
    val = _read_json(run_dir / VAL_REPORT, notes)
    test = _read_json(run_dir / TEST_REPORT, notes)
    confusion = _read_npy(run_dir / VAL_CONFUSION, notes)
    test_confusion = _read_npy(run_dir / TEST_CONFUSION, notes)
    classes = _classes(val, test, run, _read_record(ModelMeta, run_dir, notes))
    if classes is None and confusion is not None:
        classes = [str(i) for i in range(len(confusion))]

    images: dict[str, Path] = {}
    if isinstance(history, Mapping) and history:
        images["Training curves"] = plot_training_curves(history, run_dir / CURVES_PNG, _warn_pct(run))
    if confusion is not None and classes is not None and confusion.shape == (len(classes), len(classes)):
        images["Confusion matrix (val)"] = plot_confusion_matrix(confusion, classes, run_dir / CONFUSION_PNG)
    elif confusion is not None:
        notes.append(f"{VAL_CONFUSION} has shape {confusion.shape}, not {len(classes or [])}×{len(classes or [])}: not plotted")
    if isinstance(val, Mapping) and classes:
        f1, support = _per_class(val, classes)
        images["Per-class F1 (val)"] = plot_per_class_f1(f1, support, classes, run_dir / F1_PNG)

    gallery = build_gallery(run_dir, notes=notes)
    if (run_dir / predictions_file("val")).is_file():
        write_suspects_csv(run_dir / SUSPECTS_CSV, gallery.suspects)
    page = render_html(run_dir=run_dir, history=history, run=run, data_summary=data_summary,
                       reports={"val": val, "test": test}, confusions={"val": confusion, "test": test_confusion},
                       classes=classes, images=images, notes=notes, gallery=gallery)
    out = atomic_write_text(run_dir / REPORT_HTML, page)
    log.debug("report written with %d plot(s), %d suspect label(s), %.1f MB of thumbnails; notes: %s",
              len(images), len(gallery.suspects), gallery.thumbnails_bytes / 1e6, notes)
    return out


# --------------------------------------------------------------------------- HTML

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
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


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
    f1, support = _per_class(val, classes)
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
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape_html(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")

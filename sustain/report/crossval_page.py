"""The crossval report (`OUTPUT/crossval/<scheme>/report.html`): the folds' table, accuracy per fold with
its interval, the shift gap per held-out source, per-class F1 per fold, and the top label issues with
thumbnails. Built from `crossval.json`, `predictions_oof.npz` and `label_issues.csv` alone.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import LABEL_ISSUES_CSV, REPORT_HTML, CrossvalRecord
from ..evaluate import Thumbnails, crossval, predictions_file, sample
from ..utils import atomic_write_text, escape_html
from .gallery_html import CSS as GALLERY_CSS
from .gallery_html import tile
from .html import html_table, img_html, page
from .plots import _save, new_figure, tight_layout

ACCURACY_PNG = "crossval_accuracy.png"
ISSUES_SHOWN = 24


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _ci(ci: Sequence[float] | None) -> str:
    return "n/a" if not ci else f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}%"


def plot_fold_accuracy(folds: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], path: Path) -> Path:
    """Accuracy per fold with its Wilson 95% interval, and the mean with its t interval as a band."""
    fig = new_figure((max(5.0, 0.8 * len(folds) + 2), 4.0))
    ax = fig.add_subplot()
    x = np.arange(len(folds))
    acc = np.array([f["accuracy"] if f["accuracy"] is not None else np.nan for f in folds], dtype=float)
    lo = np.array([acc[i] - f["accuracy_ci95"][0] if f["accuracy_ci95"] else 0 for i, f in enumerate(folds)])
    hi = np.array([f["accuracy_ci95"][1] - acc[i] if f["accuracy_ci95"] else 0 for i, f in enumerate(folds)])
    ax.errorbar(x, acc, yerr=[lo, hi], fmt="o", capsize=4, label="fold accuracy (Wilson 95%)")
    mean = summary["accuracy"]
    if mean["mean"] is not None:
        ax.axhline(mean["mean"], color="tab:green", label="mean over folds")
        if mean["ci95"]:
            ax.axhspan(*mean["ci95"], color="tab:green", alpha=0.15, label="mean, t 95% interval")
    ax.set_xticks(x, [str(f["held_out"]) for f in folds], rotation=30 if len(folds) > 6 else 0)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy (fine-labelled test images)")
    ax.set_xlabel("held-out fold / source")
    ax.legend(loc="lower left", fontsize=8)
    tight_layout(fig)
    return _save(fig, path)


def _folds_table(record: CrossvalRecord) -> str:
    rows = [[f["name"], str(f["held_out"]), f["n_train"], f["n_val"], f["n_test"], f["n_fine"], _pct(f["accuracy"]),
             _ci(f["accuracy_ci95"]), "n/a" if f["macro_f1"] is None else f"{f['macro_f1']:.4f}",
             _pct(f["set_accuracy"]), f["near_duplicates_removed"], sum(f["unseen_class_images"].values())]
            for f in record.folds]
    s = record.summary
    rows.append(["mean ± std", "", "", "", "", "", _pct(s["accuracy"]["mean"]), _ci(s["accuracy"]["ci95"]),
                 "n/a" if s["macro_f1"]["mean"] is None else f"{s['macro_f1']['mean']:.4f} ± {s['macro_f1']['std']:.4f}",
                 "", "", ""])
    return html_table(["fold", "held out", "train", "val", "test", "scored (fine)", "accuracy", "95% interval",
                       "macro F1", "set accuracy", "near duplicates removed", "untrained-class images excluded"], rows)


def _sources_table(sources: Sequence[Mapping[str, Any]]) -> str:
    if not sources:
        return ""
    rows = [[s["source"], _pct(s["out_of_source_accuracy"]), _ci(s["out_of_source_ci95"]), s["n_out_of_source"],
             _pct(s["in_domain_accuracy"]), _ci(s["in_domain_ci95"]), s["n_in_domain"],
             "n/a" if s["shift_gap"] is None else f"{100 * s['shift_gap']:+.2f} points", s["in_domain_from"] or "n/a"]
            for s in sources]
    return ("<h2>Shift gap: out-of-source vs in-domain accuracy</h2>" +
            html_table(["source", "out of source", "95% interval", "n", "in domain", "95% interval", "n", "gap",
                        "in-domain figure from"], rows))


def _per_class_table(folds: Sequence[Mapping[str, Any]]) -> str:
    classes = list(dict.fromkeys(c for f in folds for c in f["per_class_f1"]))
    if not classes:
        return ""
    rows = [[c, *("" if c not in f["per_class_f1"] else f"{f['per_class_f1'][c]:.3f}" for f in folds)]
            for c in classes]
    return "<h2>Per-class F1 per held-out fold</h2>" + html_table(["class", *(str(f["held_out"]) for f in folds)], rows)


def _issues_section(folder: Path, record: CrossvalRecord) -> str:
    path = folder / LABEL_ISSUES_CSV
    stats = record.label_issues
    head = (f"<h2>Label issues</h2><p>{stats.get('n_issues', 0)} likely label errors among "
            f"{stats.get('n_screened', 0)} images, each predicted by a model that never saw it "
            f"({escape_html(LABEL_ISSUES_CSV)}); worst first.</p>")
    oof_path = folder / predictions_file(crossval.OOF_SPLIT)
    if not path.is_file() or not oof_path.is_file():
        return head
    with path.open(newline="", encoding="utf-8") as fh:
        issues = list(csv.DictReader(fh))[:ISSUES_SHOWN]
    sp, _ = crossval.load_oof(oof_path)
    where = {str(p): i for i, p in enumerate(sp.paths)}
    thumbs = Thumbnails()
    tiles = [tile(sample(sp, where[row["path"]]), thumbs) for row in issues if row["path"] in where]
    return head + f"<style>{GALLERY_CSS}</style>" + '<div class="sg-grid">' + "".join(tiles) + "</div>"


def build_crossval_page(folder: str | Path) -> Path:
    """Write `report.html` (and its plot) in a scheme folder; return its path."""
    folder = Path(folder)
    record = CrossvalRecord.read(folder)
    title = f"Sustain cross-validation — {record.scheme}"
    s = record.summary
    sections = [f"<h1>{escape_html(title)}</h1>",
                f'<p class="muted">Built {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from {escape_html(folder.resolve())}</p>',
                f"<p>Accuracy {_pct(s['accuracy']['mean'])} (std {_pct(s['accuracy']['std'])}, 95% interval "
                f"{_ci(s['accuracy']['ci95'])}) over {s['accuracy']['n_folds']} folds; out-of-fold over "
                f"{record.oof.get('n_fine', 0)} fine-labelled images: {_pct(record.oof.get('accuracy'))} "
                f"({_ci(record.oof.get('accuracy_ci95'))}).</p>",
                "<h2>Folds</h2>" + _folds_table(record)]
    if record.skipped_sources:
        sections.append('<p class="note">Not held out: ' + escape_html("; ".join(
            f"{k} ({v['fine_images']} fine-labelled images: {v['reason']})" for k, v in record.skipped_sources.items()))
            + "</p>")
    sections.append(img_html("Accuracy per fold", plot_fold_accuracy(record.folds, s, folder / ACCURACY_PNG)))
    sections += [_sources_table(record.sources), _per_class_table(record.folds), _issues_section(folder, record)]
    return atomic_write_text(folder / REPORT_HTML, page(title, "\n".join(x for x in sections if x)))

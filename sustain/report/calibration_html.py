"""The report's calibration section (issue #29), self-contained: `calibration_section(run_dir)`.

Built from ``best_model.json`` (T, the target and the thresholds) and each split's
``predictions_<split>.npz`` (calibrated probabilities), so it applies to any split the run
scored: val, test, and the held-out ``ood`` split when the run has one (each of its sources
too). It shows ECE before and after, the reliability diagram before and after, the
risk–coverage curve of each split with the threshold marked, and per split the coverage,
the accepted accuracy with its 95% interval and the number of images left to review. A
target the data does not back is said in red.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import ArtifactError, ModelMeta
from ..evaluate import (
    accept_report,
    calibration_from_meta,
    decision_level,
    expected_calibration_error,
    load_predictions,
    predictions_file,
    reliability,
    risk_coverage,
    scored,
    uncalibrate,
)
from ..taxonomy import taxonomy_from_meta
from ..utils import escape_html
from .html import html_table, img_html
from .plots import plot_calibration

SPLITS = ("val", "test", "ood")  # ood: sources held out of training (data.split.holdout_sources)
CALIBRATION_PNG = "calibration.png"
_STATUS = {"met": ("ok", "target met (95% lower bound)"), "unproven": ("bad", "point estimate only: not backed"),
           "failed": ("bad", "target missed"), "nothing accepted": ("bad", "nothing accepted: all to review")}


def calibration_section(run_dir: Path) -> str:
    """The section's HTML (with its plot written to ``calibration.png``), or a note why it is empty."""
    if not (run_dir / ModelMeta.FILE).is_file():  # named relative to the run folder: the page is portable
        return f'<h2>Calibration</h2><p class="muted">{ModelMeta.FILE} not found: no calibration recorded.</p>'
    try:
        meta = ModelMeta.read(run_dir).to_dict()
    except ArtifactError as exc:
        return f'<h2>Calibration</h2><p class="muted">{escape_html(exc.message.replace(str(run_dir), "."))}</p>'
    stores = {s: load_predictions(run_dir / predictions_file(s)) for s in SPLITS
              if (run_dir / predictions_file(s)).is_file()}
    if not stores:
        return '<h2>Calibration</h2><p class="muted">No predictions_*.npz in the run folder.</p>'
    taxonomy, c = taxonomy_from_meta(meta), calibration_from_meta(meta)
    t, on = c["temperature"], c.get("accept_on") or decision_level(taxonomy)
    how = "fitted on val" if c.get("method") == "fitted" else (c.get("reason") or "not fitted")
    parts = [f"<h2>Calibration</h2><p>Temperature T = {t:.4g} ({escape_html(how)}): probabilities are "
             "softmax(logits / T). The arg-max, hence accuracy, does not change.</p>",
             html_table(["split", "images", "ECE before", "ECE after"],
                        [[s, len(st.probs), _num(expected_calibration_error(uncalibrate(st.probs, t), st.targets)),
                          _num(expected_calibration_error(st.probs, st.targets))] for s, st in stores.items()])]
    shown = "test" if "test" in stores else next(iter(stores))
    rel = {"before": reliability(uncalibrate(stores[shown].probs, t), stores[shown].targets),
           "after": reliability(stores[shown].probs, stores[shown].targets)}
    curves = {s: risk_coverage(*scored(st.probs, st.targets, taxonomy, on)) for s, st in stores.items() if s != "val"}
    png = plot_calibration(rel, curves or {shown: risk_coverage(*scored(stores[shown].probs, stores[shown].targets,
                                                                            taxonomy, on))},
                           c.get("accept_threshold"), run_dir / CALIBRATION_PNG, shown, c.get("accept_accuracy"))
    parts.append(_accept_html(stores, taxonomy, c))
    parts.append(img_html("Reliability and risk–coverage", png))
    return "".join(parts)


def _accept_html(stores: Mapping[str, Any], taxonomy: Any, c: Mapping[str, Any]) -> str:
    target = c.get("accept_accuracy")
    if target is None:
        return '<p class="muted">No accept-or-review threshold: train with eval.accept_accuracy (e.g. 0.98).</p>'
    thresholds = c.get("accept_thresholds") or {c["accept_on"]: c.get("accept_threshold")}
    rows, red = [], []
    for split, st in stores.items():
        groups = {split: np.ones(len(st.probs), dtype=bool)}
        if split == "ood":  # each held-out source on its own: one may fail where another passes
            groups.update({f"ood · {src}": st.sources == src for src in sorted(set(st.sources.tolist()))})
        for name, rows_of in groups.items():
            for level, a in accept_report(st.probs[rows_of], st.targets[rows_of], taxonomy, target,
                                          thresholds).items():
                rows.append((name, level, a))
                if a["status"] != "met" and level == c["accept_on"]:
                    red.append(f"{name}: {_STATUS[a['status']][1]}")
    chosen = c.get("accept_threshold")
    head = (f"<p>Accept when the {escape_html(c['accept_on'])} probability ≥ {chosen:.4f}, chosen on val so the lower "
            f"bound of the 95% Clopper–Pearson interval on the accepted accuracy is ≥ {target:.2%}; the rest go to "
            "review.</p>" if chosen is not None else
            f'<p class="bad">No threshold backs {target:.2%} on val: every prediction goes to review.</p>')
    if red:
        head += "".join(f'<p class="bad">✗ {escape_html(r)}</p>' for r in red)
    return head + _accept_table(rows)


def _accept_table(rows: list[tuple[str, str, dict[str, Any]]]) -> str:
    header = ["split", "decided on", "threshold", "images", "accepted", "coverage", "accepted accuracy",
              "95% interval", "to review", "verdict"]
    body = ""
    for name, level, a in rows:
        lo_hi = "n/a" if a["interval"] is None else f"{a['interval'][0]:.2%}–{a['interval'][1]:.2%}"
        cls, verdict = _STATUS[a["status"]]
        cells = [name, level, _num(a["threshold"]), a["n"], a["accepted"], _pct(a["coverage"]),
                 _pct(a["accepted_accuracy"]), lo_hi, a["review"]]
        body += ("<tr>" + "".join(f"<td>{escape_html(x)}</td>" for x in cells)
                 + f'<td class="{cls}">{escape_html(verdict)}</td></tr>')
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + f"</tr>{body}</table>"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2%}"

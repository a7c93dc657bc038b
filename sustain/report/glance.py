"""The report's opening: at most five lines a busy reader takes in before anything else.

The checklist's verdict, the test accuracy (with its Wilson 95% interval over
the test images; `sustain crossval` gives the one over folds), the weakest
class, the weakest source, and what to look at first. Each line is a pure
function of the artifacts, so the page and a test agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..artifacts import SUSPECTS_CSV
from ..evaluate import wilson_interval

MAX_LINES = 5
MIN_SOURCE_IMAGES = 5  # a source scored on fewer images says little about the source


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else "n/a"


def checklist_line(run: Mapping[str, Any] | None) -> str | None:
    items = [it for it in (run or {}).get("checklist") or [] if isinstance(it, Mapping)]
    if not items:
        return None
    failed = [str(it.get("item", it.get("id", "?"))) for it in items if not it.get("passed")]
    verdict = f"Checklist: {len(items) - len(failed)} of {len(items)} criteria met"
    if not failed:
        return verdict + " ✓"
    more = f" and {len(failed) - 2} more" if len(failed) > 2 else ""
    return f"{verdict}; not met: {'; '.join(failed[:2])}{more}"


def accuracy_line(reports: Mapping[str, Any], run: Mapping[str, Any] | None) -> str | None:
    split = "test" if isinstance(reports.get("test"), Mapping) else "val"
    report = reports.get(split)
    if not isinstance(report, Mapping) or report.get("accuracy") is None:
        return None
    n = report.get("n_fine")
    line = f"{split.capitalize()} accuracy {_pct(report['accuracy'])} on {n if n is not None else '?'} images"
    bounds = wilson_interval(report["accuracy"] * n, n) if isinstance(n, int) else None
    if bounds is not None:  # `sustain crossval` gives the interval over folds; one run, over its images
        line += f" (95% interval {_pct(bounds[0])} to {_pct(bounds[1])})"
    return line + f", macro-F1 {report['macro_f1']:.3f}" if isinstance(report.get("macro_f1"), float) else line


def weakest_class(reports: Mapping[str, Any], classes: Sequence[str] | None) -> tuple[str, float, int] | None:
    """(class, F1, support) of the lowest F1 among classes with samples, test first, else val."""
    report = next((r for r in (reports.get("test"), reports.get("val")) if isinstance(r, Mapping)), None)
    if report is None or not classes:
        return None
    scored = [(float(report[c].get("f1-score", 0.0)), c, int(report[c].get("support", 0)))
              for c in classes if isinstance(report.get(c), Mapping) and report[c].get("support")]
    if not scored:
        return None
    f1, name, support = min(scored)
    return name, f1, support


def weakest_source(reports: Mapping[str, Any]) -> tuple[str, float, int] | None:
    """(source, accuracy, images) of the least accurate source, when more than one was scored."""
    report = next((r for r in (reports.get("test"), reports.get("val")) if isinstance(r, Mapping)), None)
    per = {s: v for s, v in ((report or {}).get("per_source_accuracy") or {}).items()
           if isinstance(v, Mapping) and v.get("acc") is not None and v.get("n_fine", 0) >= MIN_SOURCE_IMAGES}
    if len(per) < 2:
        return None
    name = min(per, key=lambda s: (per[s]["acc"], s))
    return name, float(per[name]["acc"]), int(per[name]["n_fine"])


def first_look(run: Mapping[str, Any] | None, n_suspects: int, weak: tuple[str, float, int] | None,
               top_pair: tuple[str, str, int] | None) -> str:
    """What to look at first: an unfinished run, then suspect labels, a trend warning, the weakest class."""
    run = run or {}
    if run.get("status") not in (None, "completed"):
        return f"Look first at why the run is {run['status']}: {run.get('stop_reason') or 'see Health record'}."
    if n_suspects:
        return (f"Look first at the {n_suspects} suspect label(s) (Suspect labels, {SUSPECTS_CSV}): "
                "wrong labels cap every metric.")
    warnings = (run.get("health") or {}).get("trend_warnings") or []
    if warnings and isinstance(warnings[0], Mapping):
        return f"Look first at the trend warning: {warnings[0].get('message', warnings[0].get('id'))}."
    if top_pair is not None:
        return f"Look first at {top_pair[0]} predicted as {top_pair[1]} ({top_pair[2]} image(s), Most-confused pairs)."
    if weak is not None:
        return f"Look first at {weak[0]}, the weakest class."
    return "Nothing stands out: the run met its checks."


def glance_lines(run: Mapping[str, Any] | None, reports: Mapping[str, Any], classes: Sequence[str] | None,
                 n_suspects: int, top_pair: tuple[str, str, int] | None) -> list[str]:
    """The opening lines (at most MAX_LINES), in the order a reader asks them."""
    weak, source = weakest_class(reports, classes), weakest_source(reports)
    lines = [checklist_line(run), accuracy_line(reports, run),
             f"Weakest class: {weak[0]} (F1 {weak[1]:.2f} on {weak[2]} image(s))" if weak else None,
             f"Weakest source: {source[0]} ({_pct(source[1])} on {source[2]} images)" if source else None,
             first_look(run, n_suspects, weak, top_pair)]
    return [line for line in lines if line][:MAX_LINES]

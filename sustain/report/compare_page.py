"""`sustain compare RUN_DIR RUN_DIR… [--html FILE]`: the comparison printed, and as a page, the verdict first.

The comparison itself is `sustain.evaluate.compare` (pure); this module draws
the curves, writes the HTML and runs the command. The page names runs by their
folder's name only: it can be sent to a colleague without the sender's
directory layout.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..evaluate import (
    VERDICTS,
    compare_runs,
    exit_code,
    format_comparison,
    load_run,
    table_rows,
    verdict_lines,
)
from ..utils import atomic_write_text, escape_html
from .html import CSP, CSS, html_table
from .plots import history_series, new_figure, tight_layout

log = logging.getLogger("sustain.report.compare_page")


def curves_png(runs: Sequence[Mapping[str, Any]]) -> bytes:
    """Val accuracy, val macro-F1, train and val loss per epoch, one line per run."""
    fig = new_figure((12.0, 8.0))
    for ax, (key, title) in zip(fig.subplots(2, 2).flat, (("val_acc", "Val accuracy"), ("val_macro_f1", "Val macro-F1"),
                                                           ("train_loss", "Train loss"), ("val_loss", "Val loss")),
                                strict=True):
        for r in runs:
            values = history_series(r["history"], key)
            ax.plot(range(1, len(values) + 1), values, marker="o", label=r["name"])
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    tight_layout(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _verdict_html(result: Mapping[str, Any]) -> str:
    repro = result["reproducibility"]
    lines = verdict_lines(result)
    if repro is None:
        return "".join(f'<p class="muted">{escape_html(x)}</p>' for x in lines)
    ok = repro["verdict"] != "not"
    head = f'<p class="verdict {"ok" if ok else "bad"}"><b>{escape_html(VERDICTS[repro["verdict"]])}</b></p>'
    return head + "".join(f"<p>{escape_html(x)}</p>" for x in [repro["detail"], *lines[1:]])


def _differences_html(result: Mapping[str, Any]) -> str:
    names = [r["name"] for r in result["runs"]]
    parts = []
    for title, diffs in (("Settings that change results", result["config_differences"]),
                         ("Settings without effect on results", result["neutral_differences"])):
        body = html_table(["key", *names], [[k, *map(str, v)] for k, v in diffs.items()]) if diffs else \
            '<p class="muted">None differ.</p>'
        parts.append(f"<h3>{escape_html(title)}</h3>{body}")
    return "".join(parts)


def render_html(result: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> str:
    rows = table_rows(result)
    rows = [rows[0]] + [r for r in rows[1:] if not r[0].startswith("config: ")]  # settings have their own section
    png = base64.b64encode(curves_png(runs)).decode("ascii")
    names = ", ".join(r["name"] for r in result["runs"])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>Sustain run comparison</title>'
            f"<style>{CSS}</style></head><body>\n<h1>Sustain run comparison</h1>{_verdict_html(result)}"
            f'<p class="muted">Runs (folder names): {escape_html(names)}</p>'
            f"<h2>What differs</h2>{_differences_html(result)}"
            f"<h2>Outcomes</h2>{html_table(rows[0], rows[1:])}<h2>Training curves</h2>"
            f'<img alt="training curves" src="data:image/png;base64,{png}">\n</body></html>\n')


def write_compare_page(path: Path, result: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> Path:
    return atomic_write_text(path, render_html(result, runs))


def compare_cli(run_dirs: Sequence[str], html_path: str | None = None) -> int:
    """`sustain compare`: print the table and the verdict; with `html_path`, write the page too.

    Exit code 1 when two runs of the same settings are not reproduced (`evaluate.compare.exit_code`)."""
    if len(run_dirs) < 2:
        raise UsageError("compare needs at least two run folders", "sustain compare RUN_DIR RUN_DIR [...]")
    runs = [load_run(p) for p in run_dirs]
    result = compare_runs(runs)
    for line in format_comparison(result):
        log.info(line)
    if html_path:
        log.info("✓ Comparison written: %s", write_compare_page(Path(html_path), result, runs))
    return exit_code(result)

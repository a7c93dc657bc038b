"""`sustain compare RUN_DIR RUN_DIR… [--html FILE]`: the comparison printed, and as a page.

The comparison itself is `sustain.evaluate.compare` (pure); this module draws
the curves, writes the HTML and runs the command.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..evaluate import VERDICTS, compare_runs, format_comparison, load_run, table_rows
from ..utils import atomic_write_text, escape_html
from .html import CSS, html_table
from .plots import history_series, new_figure

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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render_html(result: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> str:
    rows = table_rows(result)
    repro = result["reproducibility"]
    verdict = f"<p><b>{escape_html(VERDICTS[repro['verdict']])}</b> ({escape_html(repro['detail'])})</p>" if repro else ""
    png = base64.b64encode(curves_png(runs)).decode("ascii")
    paths = "".join(f"<li>{escape_html(r['name'])}: {escape_html(r['path'])}</li>" for r in result["runs"])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Sustain run comparison</title>'
            f"<style>{CSS}</style></head><body>\n<h1>Sustain run comparison</h1><ul>{paths}</ul>{verdict}"
            f"{html_table(rows[0], rows[1:])}<h2>Training curves</h2>"
            f'<img alt="training curves" src="data:image/png;base64,{png}">\n</body></html>\n')


def compare_cli(run_dirs: Sequence[str], html_path: str | None = None) -> int:
    """`sustain compare`: print the table (and verdict); with `html_path`, write the page too.

    Exit code 1 when two runs of the same config and seed are not reproducible (a failed check)."""
    if len(run_dirs) < 2:
        raise UsageError("compare needs at least two run folders", "sustain compare RUN_DIR RUN_DIR [...]")
    runs = [load_run(p) for p in run_dirs]
    result = compare_runs(runs)
    for line in format_comparison(result):
        log.info(line)
    if html_path:
        log.info("✓ Comparison written: %s", atomic_write_text(Path(html_path), render_html(result, runs)))
    repro = result["reproducibility"]
    return 1 if repro is not None and repro["verdict"] == "not" else 0

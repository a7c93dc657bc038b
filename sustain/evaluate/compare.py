"""Finished runs side by side: the pure comparison behind `sustain compare` (its page: `report.compare_page`).

Reads each run folder's `run.json`, `metrics_history.json` and the final
classification reports (nothing else, no model). The comparison is a pure
function of what was read: the config keys that differ, best epoch, val and
test accuracy and macro-F1, per-class F1 deltas against the first run, and the
time. Two runs of the same config and seed also get the seed's reproducibility
verdict: identical, within ±2 %, or not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..artifacts import HISTORY, TEST_REPORT, TIMING_KEYS, VAL_REPORT, History, RunRecord
from ..errors import UsageError
from ..utils import flatten

REPRO_TOLERANCE = 0.02  # SPEC §6: a rerun on an accelerator stays within ±2 % (accuracy, as a fraction)
RUN_SPECIFIC = ("output_dir",)  # config keys that differ between any two runs by design


def load_run(path: str | Path) -> dict[str, Any]:
    """What the comparison needs from one run folder; a UsageError when it is not a finished run."""
    folder = Path(path).expanduser()
    if not (folder / HISTORY).is_file():
        raise UsageError(f"{folder} is not a run folder: it has no {HISTORY}",
                         "pass the output folders of `sustain train` runs")

    def read(name: str) -> Any:
        p = folder / name
        try:
            return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
        except (OSError, ValueError) as exc:
            raise UsageError(f"{p} cannot be read: {exc}", "rebuild it, or leave this run out") from None

    run = RunRecord.read_if_present(folder)  # the records' reader: a malformed file names itself and its key
    return {"name": folder.resolve().name, "path": str(folder.resolve()), "run": run.to_dict() if run else {},
            "history": History.read(folder).to_dict(), "val": read(VAL_REPORT), "test": read(TEST_REPORT)}


def reproducibility(history_a: Mapping[str, Any], history_b: Mapping[str, Any],
                    tolerance: float = REPRO_TOLERANCE) -> dict[str, Any]:
    """The seed's check on two runs' per-epoch val accuracy: 'identical', 'within' ±tolerance, or 'not'."""
    a, b = list(history_a.get("val_acc") or []), list(history_b.get("val_acc") or [])
    if not a or not b or None in a or None in b:
        return {"verdict": "not", "detail": "a run has no val accuracy to compare"}
    if len(a) != len(b):
        return {"verdict": "not", "detail": f"the runs trained {len(a)} and {len(b)} epochs (early stopping differed)"}
    worst = max(abs(x - y) for x, y in zip(a, b, strict=True))
    same = all(history_a.get(k) == history_b.get(k) for k in set(history_a) | set(history_b) if k not in TIMING_KEYS)
    detail = (f"best val acc {max(a):.2%} vs {max(b):.2%}; largest per-epoch difference {worst:.2%} "
              f"(tolerance ±{tolerance:.0%})")
    verdict = "identical" if same else "within" if worst <= tolerance else "not"
    return {"verdict": verdict, "detail": detail, "max_epoch_diff": worst, "tolerance": tolerance}


def compare_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The comparison of loaded runs (`load_run`); the first run is the baseline for the deltas."""
    configs = [flatten(r["run"].get("config") or {}) for r in runs]
    keys = sorted(set().union(*configs))
    differ = {k: [c.get(k) for c in configs] for k in keys
              if k not in RUN_SPECIFIC and len({c.get(k) for c in configs}) > 1}
    split = "test" if all(r["test"] for r in runs) else "val"
    classes = list((runs[0][split] or {}).get("classes") or [])
    f1 = [{c: (r[split] or {}).get(c, {}).get("f1-score") for c in classes} for r in runs]
    deltas = {c: [None if f[c] is None or f1[0][c] is None else f[c] - f1[0][c] for f in f1[1:]] for c in classes}
    result = {"runs": [_row(r) for r in runs], "config_differences": differ, "f1_split": split,
              "per_class_f1": {c: [f[c] for f in f1] for c in classes}, "per_class_f1_delta": deltas,
              "reproducibility": None}
    if len(runs) == 2 and not differ:  # the same config and seed
        result["reproducibility"] = reproducibility(runs[0]["history"], runs[1]["history"])
    return result


def _row(r: Mapping[str, Any]) -> dict[str, Any]:
    best, timings = r["run"].get("best") or {}, r["run"].get("timings") or {}
    val, test = r["val"] or {}, r["test"] or {}
    return {"name": r["name"], "path": r["path"], "status": r["run"].get("status"),
            "epochs": len(r["history"].get("epoch") or []), "best_epoch": best.get("epoch"),
            "val_acc": val.get("accuracy", best.get("val_acc")), "val_macro_f1": val.get("macro_f1",
                                                                                         best.get("macro_f1")),
            "test_acc": test.get("accuracy"), "test_macro_f1": test.get("macro_f1"),
            "train_seconds": timings.get("train_seconds"), "total_seconds": timings.get("total_seconds")}


# --------------------------------------------------------------------------- text and HTML

VERDICTS = {"identical": "✓ Reproducible: identical", "within": "✓ Reproducible: within ±2%",
            "not": "✗ Not reproducible"}


def table_rows(result: Mapping[str, Any]) -> list[list[str]]:
    """The comparison as rows of text: a header of run names, then one row per quantity."""
    runs = result["runs"]
    rows = [["", *[r["name"] for r in runs]]]
    rows += [[f"config: {k}", *[str(v) for v in vals]] for k, vals in result["config_differences"].items()]
    for key, label, fmt in (("best_epoch", "best epoch", "{}"), ("val_acc", "val acc", "{:.2%}"),
                            ("val_macro_f1", "val macro-F1", "{:.4f}"), ("test_acc", "test acc", "{:.2%}"),
                            ("test_macro_f1", "test macro-F1", "{:.4f}"), ("train_seconds", "train time (s)", "{:.1f}"),
                            ("total_seconds", "total time (s)", "{:.1f}")):
        rows.append([label, *["n/a" if r[key] is None else fmt.format(r[key]) for r in runs]])
    split = result["f1_split"]
    for c, deltas in result["per_class_f1_delta"].items():
        base = result["per_class_f1"][c][0]
        rows.append([f"{split} F1 {c}", "n/a" if base is None else f"{base:.3f}",
                     *["n/a" if d is None else f"{d:+.3f}" for d in deltas]])
    return rows


def format_comparison(result: Mapping[str, Any]) -> list[str]:
    rows = table_rows(result)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if not result["config_differences"]:
        lines.append("(the configs are the same apart from the output folder)")
    repro = result["reproducibility"]
    if repro is not None:
        lines.append(f"{VERDICTS[repro['verdict']]} ({repro['detail']})")
    return lines

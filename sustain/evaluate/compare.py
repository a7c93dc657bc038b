"""Finished runs side by side: the pure comparison behind `sustain compare` (its page: `report.compare_page`).

Reads each run folder's `run.json`, `metrics_history.json` and the final
classification reports (nothing else, no model). The comparison is a pure
function of what was read. Differences come in three kinds: what changes
results (model, data, seed, schedule, precision, versions, device), what does
not (tracking, output folder, worker counts: the data order never depends on
them), and the measured outcomes. Two runs with no difference of the first
kind get one verdict on the outcomes: identical (every metric bitwise equal),
reproduced within tolerance (naming the largest difference), or not reproduced
(naming the first epoch and metric that diverged).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..artifacts import HISTORY, TEST_REPORT, TIMING_KEYS, VAL_REPORT, History, RunRecord
from ..errors import UsageError
from ..utils import flatten

REPRO_TOLERANCE = 0.02  # SPEC §6: a rerun on an accelerator stays within ±2 %
# Config keys (flattened) that never change what a run computes: where it writes and logs, how many
# processes read the data (the loaders' order never depends on the worker count), where caches live.
NEUTRAL_KEYS = ("output_dir", "data.root", "data.cache_dir", "data.num_workers", "data.ingest_workers")
NEUTRAL_PREFIXES = ("tracking.",)
NEUTRAL_RUN_FACTS = ("device.num_workers",)
# What run.json records beside the config that changes results: the data, the machine, the libraries.
RUN_FACTS = ("manifest_hash", "device.type", "device.name", "device.precision", "device.channels_last",
             "device.world_size", "device.num_workers")
# Fractions (accuracy, F1, skipped share) are compared within ±tolerance; other numbers within ±tolerance
# of their size (losses, the LR); counts and verdicts must be equal.
FRACTION_METRICS = ("train_acc", "val_acc", "val_macro_f1", "val_set_acc", "skipped", "accuracy", "macro_f1")
OUTCOME_SKIP = (*TIMING_KEYS, "epoch")
EXIT_NOT_REPRODUCED = 1  # 0: identical, reproduced within tolerance, or no verdict; 2: a usage error
VERDICTS = {"identical": "✓ Identical: every metric is bitwise equal",
            "within": "✓ Reproduced within tolerance",
            "not": "✗ Not reproduced"}


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


# --------------------------------------------------------------------------- the three kinds of difference


def is_neutral(key: str) -> bool:
    """A config key or run fact that does not change results (tracking, output folder, workers...)."""
    return key in NEUTRAL_KEYS or key in NEUTRAL_RUN_FACTS or key.startswith(NEUTRAL_PREFIXES)


def run_settings(run: Mapping[str, Any]) -> dict[str, str]:
    """Everything run.json says about how a run computed: its config (flattened), data, device, versions."""
    settings = flatten(run.get("config") or {})
    facts = flatten({"device": run.get("device") or {}, "versions": run.get("versions") or {}})
    settings.update({k: v for k, v in facts.items() if k in RUN_FACTS or k.startswith("versions.")})
    if run.get("manifest_hash") is not None:
        settings["manifest_hash"] = str(run["manifest_hash"])
    return settings


def setting_differences(runs: Sequence[Mapping[str, Any]]) -> tuple[dict[str, list], dict[str, list]]:
    """(keys that change results, keys that do not) whose values differ between the runs."""
    settings = [run_settings(r["run"]) for r in runs]
    keys = sorted(set().union(*settings))
    differ = {k: [s.get(k) for s in settings] for k in keys if len({s.get(k) for s in settings}) > 1}
    changing = {k: v for k, v in differ.items() if not is_neutral(k)}
    return changing, {k: v for k, v in differ.items() if is_neutral(k)}


# --------------------------------------------------------------------------- the verdict on the outcomes


def outcomes(run: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Every measured value of a run, per epoch (the history without timings), then the final
    evaluation's accuracy and macro-F1 as one-entry series."""
    history = run.get("history") or {}
    out: dict[str, list[Any]] = {k: list(v) for k, v in history.items() if k not in OUTCOME_SKIP and k != "per_class_f1"}
    out["per_class_f1"] = [json.dumps(v) for v in history.get("per_class_f1") or []]
    for split in ("val", "test"):
        report = run.get(split) or {}
        for key in ("accuracy", "macro_f1"):
            if key in report:
                out[f"final {split} {key}"] = [report[key]]
    return out


def _scaled_difference(metric: str, a: Any, b: Any, tolerance: float) -> float:
    """|a - b| in units of the tolerance: 0 equal, ≤ 1 within it, inf for values that must match."""
    if a == b:
        return 0.0
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or isinstance(a, bool) or \
            metric == "val_samples" or not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    fraction = metric in FRACTION_METRICS or metric.rsplit(" ", 1)[-1] in FRACTION_METRICS
    scale = tolerance if fraction else tolerance * max(abs(a), abs(b))
    return abs(a - b) / scale if scale > 0 else math.inf


def _differences(a: Mapping[str, list], b: Mapping[str, list], epochs: int, tolerance: float) -> list[dict]:
    """Each differing (epoch, metric) over the first `epochs` epochs, then the final evaluation,
    with its size in units of the tolerance."""
    found = []
    cells = [(i, m) for i in range(epochs) for m in a if not m.startswith("final ")]
    cells += [(0, m) for m in a if m.startswith("final ")]
    for i, metric in cells:
        xs, ys = a[metric], b.get(metric) or []
        if i < len(xs) and i < len(ys) and (scaled := _scaled_difference(metric, xs[i], ys[i], tolerance)):
            epoch = "final" if metric.startswith("final ") else str(i + 1)
            found.append({"epoch": epoch, "metric": metric, "a": xs[i], "b": ys[i], "scaled": scaled})
    return found


def _describe(d: Mapping[str, Any]) -> str:
    where = "the final evaluation" if d["epoch"] == "final" else f"epoch {d['epoch']}"
    if d["metric"] == "epochs trained":
        return f"the runs trained {d['a']} and {d['b']} epochs: epoch {d['epoch']} is in one run only"
    if d["metric"] == "per_class_f1":
        return f"per-class F1 at {where}"
    x, y = d["a"], d["b"]
    delta = f" (Δ {y - x:+.3g})" if isinstance(x, (int, float)) and isinstance(y, (int, float)) else ""
    return f"{d['metric']} at {where}: {x!r} vs {y!r}{delta}"


def reproducibility(run_a: Mapping[str, Any], run_b: Mapping[str, Any],
                    tolerance: float = REPRO_TOLERANCE) -> dict[str, Any]:
    """The verdict on two runs' outcomes (`load_run` dicts): 'identical', 'within' ±tolerance, or 'not'."""
    a, b = outcomes(run_a), outcomes(run_b)
    if not (run_a.get("history") or {}).get("epoch") or not (run_b.get("history") or {}).get("epoch"):
        return {"verdict": "not", "detail": "a run has no finished epoch to compare", "tolerance": tolerance}
    epochs_a, epochs_b = run_a["history"]["epoch"], run_b["history"]["epoch"]
    diffs = _differences(a, b, min(len(epochs_a), len(epochs_b)), tolerance)
    beyond = next((d for d in diffs if d["scaled"] > 1), None)
    if beyond is None and len(epochs_a) != len(epochs_b):
        beyond = {"epoch": str(min(len(epochs_a), len(epochs_b)) + 1), "metric": "epochs trained",
                  "a": len(epochs_a), "b": len(epochs_b), "scaled": math.inf}
    if beyond is not None:
        return {"verdict": "not", "tolerance": tolerance, "first_divergence": _plain(beyond),
                "detail": f"first diverged beyond ±{tolerance:.0%}: {_describe(beyond)}"}
    if not diffs:
        return {"verdict": "identical", "tolerance": tolerance,
                "detail": f"{len(epochs_a)} epoch(s) and the final evaluation compared"}
    largest = max(diffs, key=lambda d: d["scaled"])
    return {"verdict": "within", "tolerance": tolerance, "largest_difference": _plain(largest),
            "detail": f"largest difference within ±{tolerance:.0%}: {_describe(largest)}; "
                      f"{len(diffs)} value(s) differ"}


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "scaled"}


def compare_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The comparison of loaded runs (`load_run`); the first run is the baseline for the deltas."""
    changing, neutral = setting_differences(runs)
    split = "test" if all(r["test"] for r in runs) else "val"
    classes = list((runs[0][split] or {}).get("classes") or [])
    f1 = [{c: (r[split] or {}).get(c, {}).get("f1-score") for c in classes} for r in runs]
    deltas = {c: [None if f[c] is None or f1[0][c] is None else f[c] - f1[0][c] for f in f1[1:]] for c in classes}
    result = {"runs": [_row(r) for r in runs], "config_differences": changing, "neutral_differences": neutral,
              "f1_split": split, "per_class_f1": {c: [f[c] for f in f1] for c in classes},
              "per_class_f1_delta": deltas, "reproducibility": None}
    if len(runs) == 2 and not changing:  # the same config, seed, data, device and versions
        result["reproducibility"] = reproducibility(runs[0], runs[1])
    return result


def exit_code(result: Mapping[str, Any]) -> int:
    """0: identical, reproduced within tolerance, or no verdict asked for; 1: not reproduced."""
    repro = result["reproducibility"]
    return EXIT_NOT_REPRODUCED if repro is not None and repro["verdict"] == "not" else 0


def _row(r: Mapping[str, Any]) -> dict[str, Any]:
    best, timings = r["run"].get("best") or {}, r["run"].get("timings") or {}
    val, test = r["val"] or {}, r["test"] or {}
    return {"name": r["name"], "status": r["run"].get("status"),
            "epochs": len(r["history"].get("epoch") or []), "best_epoch": best.get("epoch"),
            "val_acc": val.get("accuracy", best.get("val_acc")), "val_macro_f1": val.get("macro_f1",
                                                                                         best.get("macro_f1")),
            "test_acc": test.get("accuracy"), "test_macro_f1": test.get("macro_f1"),
            "train_seconds": timings.get("train_seconds"), "total_seconds": timings.get("total_seconds")}


# --------------------------------------------------------------------------- text and HTML


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


def verdict_lines(result: Mapping[str, Any]) -> list[str]:
    """The verdict and what the settings' differences mean for it, in words."""
    lines = []
    repro, changing, neutral = result["reproducibility"], result["config_differences"], result["neutral_differences"]
    if repro is not None:
        lines.append(f"{VERDICTS[repro['verdict']]} ({repro['detail']})")
    elif len(result["runs"]) == 2:
        lines.append(f"No reproducibility verdict: the runs differ in what changes results ({', '.join(changing)})")
    if not changing:
        lines.append("(the settings that change results are the same)")
    if neutral:
        lines.append(f"(also differ, without effect on results: {', '.join(neutral)})")
    return lines


def format_comparison(result: Mapping[str, Any]) -> list[str]:
    rows = table_rows(result)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return lines + verdict_lines(result)

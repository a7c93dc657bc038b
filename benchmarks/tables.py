"""The docs' figures, generated from the committed results: `python -m benchmarks tables [--check]`.

A table in docs/*.md or README.md is marked

    <!-- table:NAME -->
    ... generated: do not edit by hand ...
    <!-- /table:NAME -->

and TABLES below says which file under benchmarks/results/ it comes from and
which fields it shows. `tables` rewrites every marked table from its JSON;
`tables --check` changes nothing and exits 1, naming the file and the table,
when one differs from what its JSON gives (tests/test_benchmarks.py runs it).
Under each table a line names the result file, its command, commit, date,
machine and load average, so every figure leads to how it was measured.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, ROOT

DOCS = ("README.md", "docs/*.md")
MARKED = re.compile(r"(<!-- table:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.S)


@dataclass(frozen=True)
class Column:
    header: str
    key: str  # a dotted path into the row ("a.b", "rows.0.x")
    fmt: str = "{}"


@dataclass(frozen=True)
class Table:
    source: str  # a file under benchmarks/results/
    columns: tuple[Column, ...]
    rows: str | None = None  # dotted path of the rows (a list, or a dict: its key is the row's "_key")


def _c(header: str, key: str, fmt: str = "{}") -> Column:
    return Column(header, key, fmt)


PCT, MS, X, S = "{:.1%}", "{:.1f} ms", "{:.2f}×", "{:.1f} s"
# bf16 against fp32 over several seeds (bench_precision --seeds): the difference of the means beside fp32's own spread
PARITY = (_c("case", "_key"), _c("seeds", "seeds"), _c("val acc fp32", "val_acc.fp32", PCT),
          _c("val acc bf16", "val_acc.bf16", PCT), _c("Δ mean acc (goal within ±1 pt)", "val_acc.mean_delta", "{:+.2f} pt"),
          _c("fp32 seed range", "val_acc.fp32_seed_range", "{:.1f} pt"),
          _c("Δ mean macro-F1 (goal within ±0.01)", "val_macro_f1.mean_delta", "{:+.3f}"),
          _c("fp32 seed range (F1)", "val_macro_f1.fp32_seed_range", "{:.3f}"))

# sustain train against timm's train.py (bench_vs_timm): one row per case and row of work
VS_TIMM = (_c("case", "case"), _c("row", "row"), _c("epochs", "epochs"),
           _c("timm s, median (range)", "timm.median_seconds", "{:.1f}"), _c("", "timm.range_seconds", "{:.0f}"),
           _c("Sustain s, median (range)", "sustain.median_seconds", "{:.1f}"),
           _c("", "sustain.range_seconds", "{:.0f}"), _c("timm / Sustain", "ratio", X),
           _c("val acc timm", "timm.median_val_acc", PCT), _c("val acc Sustain", "sustain.median_val_acc", PCT),
           _c("load", "load_range"))
# where the median Sustain run's wall clock went, beside timm's
BREAKDOWN = (_c("case", "case"), _c("row", "row"), _c("epochs", "epochs"),
             _c("Sustain wall", "sustain_breakdown.wall", S), _c("imports", "sustain_breakdown.imports", S),
             _c("ingest", "sustain_breakdown.ingest", S),
             _c("set-up after ingest", "sustain_breakdown.setup_after_ingest", S),
             _c("training epochs", "sustain_breakdown.epochs", S),
             _c("final evaluation", "sustain_breakdown.final_evaluation", S),
             _c("report", "sustain_breakdown.report", S), _c("rest", "sustain_breakdown.rest", S),
             _c("timm wall", "timm.median_seconds", S),
             _c("timm's imports (torch, timm)", "import_seconds.torch_timm", S))

# bf16 against fp32 on one seed (bench_precision): accuracy beside the training images/s
PRECISION_SPEED = (_c("case", "case"), _c("model", "model"), _c("input", "size", "{} px"), _c("order", "order"),
                   _c("val acc fp32", "fp32.val_acc", PCT), _c("val acc bf16", "bf16.val_acc", PCT),
                   _c("Δ macro-F1", "macro_f1_delta", "{:+.3f}"), _c("fp32 train", "fp32.images_per_second", "{} img/s"),
                   _c("bf16 train", "bf16.images_per_second", "{} img/s"), _c("bf16 / fp32", "speedup", X),
                   _c("what auto chose", "auto.precision"), _c("load before → after", "load"))

TABLES: dict[str, Table] = {
    "dedupe-recall": Table("bench_dedupe.json", (
        _c("transform", "_key"), _c("kind", "kind"), _c("found", "found"), _c("of", "of"),
        _c("recall", "recall", PCT)), rows="recall"),
    "dedupe-false-merges": Table("bench_dedupe.json", (
        _c("held-out negatives", "held_out"), _c("false merges", "false_merges"),
        _c("rate (goal ≤ 0.5%)", "false_merge_rate", "{:.2%}"), _c("tuning tiles", "distinct"),
        _c("false merges among them", "tuning_false_merges"), _c("grouping, all files", "group_seconds", "{:.3f} s"))),
    "checkpoint": Table("bench_checkpoint.json", (
        _c("model", "model"), _c("last.pth", "state_mb", "{:.0f} MB"), _c("saves", "save_seconds", "{:.2f} s"),
        _c("median", "median_save_seconds", "{:.2f} s"), _c("interval", "interval_minutes", "{:g} min"),
        _c("overhead (goal ≤ 1%)", "overhead_pct", "{:.2f}%"))),
    "channels-last": Table("bench_channels_last.json", (
        _c("model", "model"), _c("input", "input_size", "{} px"), _c("batch", "batch"), _c("threads", "threads"),
        _c("ISA", "cpu_isa"), _c("default (min)", "default_min_ms", MS), _c("channels_last (min)",
                                                                           "channels_last_min_ms", MS),
        _c("default / channels_last (median of rounds)", "ratio_median", X)), rows="result"),
    "predict": Table("bench_predict.json", (
        _c("model", "model"), _c("input", "input_size", "{} px"), _c("images", "images"),
        _c("batch", "batch_size"), _c("threads", "torch_threads"), _c("batched", "batched_images_per_s", "{} img/s"),
        _c("one by one", "loop_images_per_s", "{} img/s"), _c("batched / one by one", "speedup", X))),
    "demo-accuracy": Table("bench_train.json", (
        _c("model", "model"), _c("input", "input_size", "{} px"), _c("epochs", "epochs"),
        _c("val accuracy after each epoch", "val_acc_per_epoch", "{:.1%}"), _c("best", "best_val_acc", PCT),
        _c("run completed", "ok")), rows="results"),
    "train": Table("bench_train.json", (
        _c("case", "case"), _c("model", "model"), _c("input", "input_size", "{} px"), _c("batch", "batch_size"),
        _c("workers", "num_workers"), _c("threads", "cpu_threads"),
        _c("end to end (with validation)", "end_to_end_images_per_s", "{} img/s"),
        _c("train phase", "train_phase_images_per_s", "{} img/s"), _c("ceiling", "ceiling_images_per_s", "{} img/s"),
        _c("train phase / ceiling (goal ≥ 0.9)", "ratio", "{:.2f}"), _c("end to end / ceiling", "end_to_end_ratio",
                                                                          "{:.2f}"),
        _c("ceiling beside a loader", "ceiling_beside_loader_images_per_s", "{} img/s"),
        _c("train phase / ceiling beside a loader", "ratio_beside_loader", "{:.2f}"),
        _c("best val accuracy", "best_val_acc", PCT), _c("RSS growth after epoch 2", "rss_growth_after_epoch_2_mb",
                                                         "{} MB")), rows="results"),
    "gallery": Table("bench_gallery.json", (
        _c("images", "images"), _c("model", "model"), _c("final evaluation", "final_evaluation_s", "{:.1f} s"),
        _c("store", "store_write_s", "{:.2f} s"), _c("gallery + CSV", "gallery_s", "{:.2f} s"),
        _c("suspects", "suspects"), _c("overhead (goal ≤ 10%)", "ratio", PCT))),
    "export": Table("bench_export.json", (
        _c("model", "model"), _c("input", "input_size", "{} px"),
        _c("PyTorch, batch 1", "batches.1.ms_per_batch.torch", MS),
        _c("ORT fp32", "batches.1.ms_per_batch.onnx_fp32", MS), _c("ORT int8", "batches.1.ms_per_batch.onnx_int8", MS),
        _c("int8 speed-up (goal ≥ 1.5×)", "batches.1.speedup_vs_torch.onnx_int8", X),
        _c("PyTorch, batch 8", "batches.8.ms_per_batch.torch", MS),
        _c("ORT fp32", "batches.8.ms_per_batch.onnx_fp32", MS), _c("ORT int8", "batches.8.ms_per_batch.onnx_int8", MS),
        _c("top-1 agreement int8", "batches.1.top1_agree.onnx_int8", PCT)), rows="results"),
    "mutation": Table("mutation.json", (
        _c("module", "module"), _c("mutants", "mutants"), _c("killed", "killed"), _c("survived", "survived"),
        _c("of them equivalent", "n_equivalent"), _c("not run", "not_run"),
        _c("killed / (mutants − equivalent − not run), goal ≥ 85%",
                                                      "killed_ratio", PCT)), rows="modules"),
    "suite": Table("bench_suite.json", (
        _c("checkout", "case"), _c("commit", "commit", "{:.8}"), _c("pytest options", "pytest_args"),
        _c("ruff + pytest (wall)", "make_test_s", "{:.0f} s"), _c("sum of test durations", "sum_of_durations_s",
                                                                  "{:.0f} s"),
        _c("passed", "passed"), _c("skipped", "skipped"), _c("failed", "failed")), rows="runs"),
    "suite-slowest": Table("bench_suite.json", (
        _c("file", "file"), _c("seconds (sum of its tests)", "seconds", "{:.0f} s")), rows="runs.-1.slowest_files"),
    "precision-speed": Table("bench_precision.json", PRECISION_SPEED, rows="rows"),
    "precision-speed-eva02": Table("bench_precision_eva02_speed.json", PRECISION_SPEED, rows="rows"),
    "precision-parity": Table("bench_precision_parity.json", PARITY, rows="parity"),
    "precision-parity-eva02": Table("bench_precision_parity_eva02.json", PARITY, rows="parity"),
    "vs-timm": Table("bench_vs_timm.json", VS_TIMM, rows="rows"),
    "vs-timm-2epochs": Table("bench_vs_timm_2epochs.json", VS_TIMM, rows="rows"),
    "vs-timm-photos": Table("bench_vs_timm_photos.json", VS_TIMM, rows="rows"),
    "wall-clock-breakdown": Table("bench_vs_timm.json", BREAKDOWN, rows="rows"),
    "wall-clock-breakdown-photos": Table("bench_vs_timm_photos.json", BREAKDOWN, rows="rows"),
    "wall-clock-breakdown-2epochs": Table("bench_vs_timm_2epochs.json", BREAKDOWN, rows="rows"),
}


def lookup(doc: Any, key: str) -> Any:
    """`doc` followed along the dotted `key` (list items by index); KeyError naming the key when absent."""
    value = doc
    for part in key.split("."):
        if isinstance(value, list) and part.lstrip("-").isdigit():
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(key)
    return value


def cell(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "✓" if value else "✗"
    if isinstance(value, list):
        return ", ".join(cell(v, fmt) for v in value)
    return fmt.format(value)


def provenance_line(source: str, doc: dict[str, Any], up: str = "../") -> str:
    """Which file, command, commit, date, machine and load a table's figures come from (its provenance block)."""
    p = doc.get("provenance")
    if not p:
        raise KeyError(f"benchmarks/results/{source} has no provenance block; rerun the benchmark that writes it")
    machine = p.get("machine") or {}
    commit = (p.get("commit") or {}).get("sha") or "?"
    unknown = ["not recorded"]  # a result converted from before provenance may lack a fact
    before, after = machine.get("load_average_before") or unknown, machine.get("load_average_after") or unknown
    return (f"From [`benchmarks/results/{source}`]({up}benchmarks/results/{source}): "
            f"`{p.get('command', '?')}` at `{commit[:10]}`, {str(p.get('date_utc', '?'))[:10]}, "
            f"{machine.get('cpu_model') or 'CPU not recorded'} ({machine.get('usable_cores', '?')} cores), "
            f"load average {before[0]} → {after[0]}.")


def render(name: str, table: Table, results_dir: Path = RESULTS_DIR, up: str = "../") -> str:
    """The Markdown of table `name` from its JSON (ends with its provenance line; `up` leads from the doc to the root)."""
    path = results_dir / table.source
    if not path.is_file():
        raise FileNotFoundError(f"table {name!r}: {path} does not exist; run the benchmark that writes it")
    doc = json.loads(path.read_text(encoding="utf-8"))
    rows = lookup(doc, table.rows) if table.rows else [doc]
    if isinstance(rows, dict):
        rows = [{"_key": key, **value} for key, value in rows.items()]
    lines = ["| " + " | ".join(c.header for c in table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    for row in rows:
        try:
            lines.append("| " + " | ".join(cell(lookup(row, c.key), c.fmt) for c in table.columns) + " |")
        except KeyError as e:
            raise KeyError(f"table {name!r}: {path} has no field {e.args[0]!r}") from None
    return "\n".join(lines) + "\n\n" + provenance_line(table.source, doc, up) + "\n"


def doc_files(root: Path = ROOT) -> list[Path]:
    return sorted({p for pattern in DOCS for p in root.glob(pattern)})


def regenerate(text: str, where: str, tables: dict[str, Table], results_dir: Path) -> tuple[str, list[str]]:
    """`text` with its marked tables regenerated, and the names of those that changed."""
    changed: list[str] = []

    def replace(m: re.Match[str]) -> str:
        name = m["name"]
        if name not in tables:
            raise KeyError(f"{where}: table {name!r} is marked but not defined in benchmarks/tables.py")
        body = render(name, tables[name], results_dir, "../" * where.count("/"))
        if body != m["body"]:
            changed.append(name)
        return m[1] + body + m[4]

    return MARKED.sub(replace, text), changed


def main(argv: list[str], root: Path = ROOT, results_dir: Path = RESULTS_DIR) -> int:
    check = "--check" in argv
    stale = []
    for path in doc_files(root):
        text = path.read_text(encoding="utf-8")
        where = str(path.relative_to(root))
        try:
            new, changed = regenerate(text, where, TABLES, results_dir)
        except (KeyError, FileNotFoundError) as e:
            print(f"{where}: {e.args[0]}", file=sys.stderr)
            return 1
        for name in changed:
            stale.append(f"{where}: table {name!r} differs from benchmarks/results/{TABLES[name].source}")
        if changed and not check:
            path.write_text(new, encoding="utf-8")
    if check and stale:
        print("\n".join(stale) + "\nrun `python -m benchmarks tables` to regenerate them", file=sys.stderr)
        return 1
    print("\n".join(stale) if stale else "every marked table matches its results")
    return 0

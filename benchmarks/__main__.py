"""`python -m benchmarks` (what `make bench` runs): every benchmark with its default sizes.

Each one prints ratios measured within its own run (these machines are noisy)
and writes its JSON under benchmarks/results/. Pass names to run a subset:
`python -m benchmarks ingest predict`.

`python -m benchmarks tables` regenerates the marked tables in README.md and
docs/*.md from those JSON files; `python -m benchmarks tables --check` exits 1
naming each table that differs from its JSON (benchmarks/tables.py).
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, its arguments); each is imported only when it runs.
BENCHMARKS = {
    "ingest": ("bench_ingest", []),
    "dedupe": ("bench_dedupe", []),
    "train": ("bench_train", []),
    "loader": ("bench_loader", []),
    "channels_last": ("bench_channels_last", []),
    "predict": ("bench_predict", []),
    "checkpoint": ("bench_checkpoint", []),
    "tracking": ("bench_tracking", []),
    "export": ("bench_export", []),
    "gallery": ("bench_gallery", []),
    "serve": ("bench_serve", []),
    "vs_timm": ("bench_vs_timm", []),  # skipped unless TIMM_TRAIN_PY names timm's train.py
}


def run(name: str) -> int:
    module, args = BENCHMARKS[name]
    return int(bool(importlib.import_module(f"benchmarks.{module}").main(list(args))))


def main(argv: list[str]) -> int:
    if argv[:1] == ["tables"]:
        from benchmarks import tables

        return tables.main(argv[1:])
    unknown = [n for n in argv if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)} or `tables [--check]`",
              file=sys.stderr)
        return 2
    failures = 0
    for name in argv or list(BENCHMARKS):
        print(f"\n=== benchmark: {name} ===", flush=True)
        failures += run(name)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`python -m benchmarks` (what `make bench` runs): every benchmark with its default sizes.

Each one prints ratios measured within its own run (these machines are noisy);
docs/performance.md records the figures. Pass names to run a subset:
`python -m benchmarks ingest predict`.
"""

from __future__ import annotations

import sys

from . import (
    bench_channels_last,
    bench_checkpoint,
    bench_dedupe,
    bench_export,
    bench_gallery,
    bench_ingest,
    bench_loader,
    bench_predict,
    bench_serve,
    bench_tracking,
    bench_train,
    bench_vs_timm,
)

BENCHMARKS = {
    "ingest": lambda: bench_ingest.main([]),
    "dedupe": lambda: bench_dedupe.main([]),
    "train": lambda: bench_train.main([]),
    "loader": lambda: bench_loader.main([]),
    "channels_last": lambda: bench_channels_last.main([]),
    "predict": lambda: (bench_predict.run([]), 0)[1],
    "checkpoint": lambda: bench_checkpoint.main([]),
    "tracking": lambda: bench_tracking.main([]),
    "export": lambda: bench_export.main([]),
    "gallery": lambda: bench_gallery.main([]),
    "serve": lambda: bench_serve.main([]),
    "vs_timm": lambda: bench_vs_timm.main([]),  # skipped unless TIMM_TRAIN_PY names timm's train.py
}


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}", file=sys.stderr)
        return 2
    failures = 0
    for name in names or list(BENCHMARKS):
        print(f"\n=== benchmark: {name} ===", flush=True)
        failures += int(bool(BENCHMARKS[name]()))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

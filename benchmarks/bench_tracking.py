"""The cost of experiment tracking on the demo's epoch time (goal ≤ 2 %).

    python benchmarks/bench_tracking.py                   # 3 pairs of 4-epoch demo runs
    python benchmarks/bench_tracking.py --pairs 5 --lake data/demo

In one process, alternating (off, on, off, on, …) so that load from other jobs
hits both sides alike: `sustain.training.engine.train` on configs/demo.yaml with
tracking **off** (`tracking.tensorboard=false`, MLflow disabled) and **on**
(TensorBoard event files and the embedded MLflow store, the step metrics every
`log_every_n_steps`). The figure is the median epoch time over epochs 2..N of
every run of a side; the ratio on/off − 1 is the overhead. Because a shared
machine's noise can exceed 2 %, the time spent inside the tracker's per-step
and per-epoch calls is also measured directly, as a share of the training
time. Setup time (the MLflow store, imports) is reported apart: it is paid
once per run.

Writes benchmarks/results/bench_tracking.json and prints a table.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: the project root on sys.path, for `benchmarks` and `sustain`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, arg_parser, results_file, write_result  # noqa: E402
from benchmarks.inputs import ensure_lake  # noqa: E402
from sustain.config import load_config  # noqa: E402

RESULTS = results_file("bench_tracking")
SIDES = {"off": ["tracking.tensorboard=false", "tracking.mlflow.enabled=false"],
         "on": ["tracking.tensorboard=true", "tracking.mlflow.enabled=true"]}


class CallTimer:
    """Seconds spent inside the Tracker's per-step and per-epoch calls: the overhead, measured directly."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t
        return timed


def one_run(side: str, lake: Path, epochs: int, base: Path, i: int) -> dict[str, Any]:
    from sustain.tracking.tracker import Tracker
    from sustain.training.engine import train

    timer = CallTimer()
    saved = Tracker.log_step, Tracker.log_epoch
    Tracker.log_step, Tracker.log_epoch = timer.wrap(saved[0]), timer.wrap(saved[1])

    out = base / f"{side}_{i}"
    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        f"data.root={lake}", f"output_dir={out}", f"train.epochs={epochs}", "train.early_stopping_patience=0",
        *SIDES[side]])
    try:
        result = train(cfg)
    finally:
        Tracker.log_step, Tracker.log_epoch = saved
    run = json.loads((out / "run.json").read_text())
    return {"epoch_seconds": result.history["epoch_seconds"][1:], "setup_seconds": run["timings"]["setup_seconds"],
            "total_seconds": run["timings"]["total_seconds"], "tracker_seconds": timer.seconds,
            "train_seconds": run["timings"]["train_seconds"]}


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--lake", type=Path, help="an existing demo lake (default: generate one)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    quiet = logging.getLogger("sustain")
    quiet.setLevel(logging.WARNING)
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    os.environ.setdefault("TQDM_DISABLE", "1")
    lake = ensure_lake(args.lake)
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    loads = []
    with tempfile.TemporaryDirectory(prefix="bench_tracking_") as tmp:
        for i in range(args.pairs):
            for side in ("off", "on"):
                runs[side].append(one_run(side, lake, args.epochs, Path(tmp), i))
                loads.append(os.getloadavg()[0])
    summary = {side: {"median_epoch_seconds": statistics.median(s for r in rs for s in r["epoch_seconds"]),
                      "median_setup_seconds": statistics.median(r["setup_seconds"] for r in rs),
                      "median_total_seconds": statistics.median(r["total_seconds"] for r in rs)}
               for side, rs in runs.items()}
    overhead = summary["on"]["median_epoch_seconds"] / summary["off"]["median_epoch_seconds"] - 1
    inside = statistics.median(r["tracker_seconds"] / r["train_seconds"] for r in runs["on"])
    result = {"pairs": args.pairs, "epochs": args.epochs, "summary": summary, "epoch_overhead": overhead, "tracker_share_of_training": inside,
              "load_average": [min(loads), max(loads)], "runs": runs}
    write_result(args.json, result)
    print(f"{'tracking':<9} {'epoch (median)':>15} {'setup':>8} {'total':>8}")
    for side, s in summary.items():
        print(f"{side:<9} {s['median_epoch_seconds']:>14.3f}s {s['median_setup_seconds']:>7.2f}s "
              f"{s['median_total_seconds']:>7.2f}s")
    print(f"time inside the tracker's step and epoch calls: {100 * inside:.2f}% of the training time")
    print(f"epoch-time overhead of tracking: {100 * overhead:+.1f}% (goal ≤ 2%); "
          f"load average {min(loads):.1f}–{max(loads):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

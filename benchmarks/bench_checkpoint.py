"""The cost of one mid-epoch `last.pth` with an EVA02-Base state, and its overhead at the default interval.

    python benchmarks/bench_checkpoint.py [--saves 3] [--step-seconds S]

Builds eva02_base_patch14_224 (pretrained=False: no download) with AdamW moments (one
optimizer step), then times `sustain.model.save_checkpoint` of the engine's payload
(model + optimizer state) the way the engine writes it: atomic, fsync'ed. The overhead at
`train.checkpoint_every_minutes` = 10 is save_seconds / 600 (the training between saves
is not slowed otherwise: the save happens between two optimizer updates).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if not __package__:  # run as a script: the project root on sys.path, for `benchmarks` and `sustain`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, arg_parser, results_file, write_result  # noqa: E402
from sustain.artifacts import LAST  # noqa: E402
from sustain.model import save_checkpoint  # noqa: E402
from sustain.training.checkpoints import FORMAT_VERSION  # noqa: E402
from sustain.training.rng import capture_rng_state  # noqa: E402

RESULTS = results_file("bench_checkpoint")


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--saves", type=int, default=3)
    parser.add_argument("--interval-minutes", type=float, default=10.0)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import timm

    model = timm.create_model("eva02_base_patch14_224", pretrained=False, num_classes=30)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():  # one step fills the AdamW moments without a forward pass
        p.grad = torch.zeros_like(p)
    optimizer.step()
    state = {"format": FORMAT_VERSION, "kind": "last", "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "rng": [capture_rng_state()], "step": 1}
    times, size = [], 0
    with tempfile.TemporaryDirectory(prefix="bench_ckpt_", dir=ROOT) as out:
        for _ in range(args.saves):
            t = time.perf_counter()
            path = save_checkpoint(Path(out) / LAST, state)
            times.append(time.perf_counter() - t)
            size = path.stat().st_size
    save_s = statistics.median(times)
    row = {"model": "eva02_base_patch14_224", "state_mb": round(size / 2**20, 1), "save_seconds": times,
           "median_save_seconds": round(save_s, 3), "interval_minutes": args.interval_minutes,
           "overhead_pct": round(100 * save_s / (60 * args.interval_minutes), 3)}
    write_result(args.json, row, echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

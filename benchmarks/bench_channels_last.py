"""A CPU training step in channels_last against the default layout, paired, in one run.

    python benchmarks/bench_channels_last.py [--threads 1 2] [--rounds 8]

For each model and thread count: forward, cross-entropy, backward and an
AdamW step of the same model weights in both memory layouts, alternating
step by step so that the machine's load hits both alike. Reports the median
of the per-round ratios (default-layout time / channels_last time; > 1:
channels_last is faster) and the minimum step time of each. This is what
`device.plan_channels_last` decides from (docs/performance.md). Set
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 to measure an AVX2 CPU on
an AVX512 one. Writes benchmarks/results/bench_channels_last.json.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import timm
import torch
from torch import nn

if not __package__:  # run as a script: the project root on sys.path, for `benchmarks` and `sustain`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import arg_parser, results_file, write_result  # noqa: E402

CASES = (("resnet18", 128, 32), ("test_resnet", 224, 16))  # bench_vs_timm's two models and sizes


def _trainer(name: str, size: int, batch: int, channels_last: bool):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = timm.create_model(name, num_classes=30).train().to(memory_format=fmt)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    labels = torch.randint(0, 30, (batch,))

    def step() -> float:
        t = time.perf_counter()
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t

    return step


def measure(name: str, size: int, batch: int, threads: int, rounds: int) -> dict:
    torch.set_num_threads(threads)
    steps = {layout: _trainer(name, size, batch, layout == "channels_last") for layout in ("default", "channels_last")}
    for step in steps.values():  # the first steps build autograd's and oneDNN's buffers
        step(), step()
    times: dict[str, list[float]] = {layout: [] for layout in steps}
    for _ in range(rounds):
        for layout, step in steps.items():
            times[layout].append(step())
    ratios = [d / c for d, c in zip(times["default"], times["channels_last"], strict=True)]
    return {"model": name, "input_size": size, "batch": batch, "threads": threads,
            "cpu_isa": torch.backends.cpu.get_cpu_capability(),
            "default_min_ms": round(1e3 * min(times["default"]), 1),
            "channels_last_min_ms": round(1e3 * min(times["channels_last"]), 1),
            "ratio_median": round(statistics.median(ratios), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    rows = []
    for name, size, batch in CASES:
        for threads in args.threads:
            row = measure(name, size, batch, threads, args.rounds)
            rows.append(row)
            print(f"{name} @{size} px, batch {batch}, {threads} thread(s), {row['cpu_isa']}: default "
                  f"{row['default_min_ms']} ms, channels_last {row['channels_last_min_ms']} ms, "
                  f"median ratio {row['ratio_median']}x", flush=True)
    write_result(results_file("bench_channels_last"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

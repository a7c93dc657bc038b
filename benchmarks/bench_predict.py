"""Batched inference vs a per-image loop, on one machine in one run.

    python benchmarks/bench_predict.py                       # test_vit at 64 px, 128 images
    python benchmarks/bench_predict.py --model eva02_tiny_patch14_224 --size 224 --images 256

Writes a randomly initialised checkpoint (the weights do not change the
speed), N PNG files of assorted sizes, then times, after a warm-up:
- batched: ``Predictor.predict(paths, batch_size=B)``;
- loop: ``for p in paths: Predictor.predict([p], batch_size=1)``.
Both include decoding and preprocessing, as a user calls them. The two run
alternately ``--repeats`` times and the fastest run of each counts. Prints both
times, images/s and the ratio, and writes benchmarks/results/bench_predict.json.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

if not __package__:  # run as a script: the project root on sys.path, for `benchmarks` and `sustain`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import arg_parser, results_file, timed, write_result  # noqa: E402
from benchmarks.inputs import write_checkpoint, write_images  # noqa: E402
from sustain.deploy.inference import Predictor, default_batch_size  # noqa: E402

RESULTS = results_file("bench_predict")








def run(argv: list[str] | None = None) -> dict:
    parser = arg_parser(__doc__)
    parser.add_argument("--model", default="test_vit")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the Predictor's for the device")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each; the fastest counts")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="sustain_bench_") as tmp:
        write_checkpoint(Path(tmp) / "run", args.model, args.size)
        paths = write_images(Path(tmp) / "images", args.images)
        predictor = Predictor.from_checkpoint(Path(tmp) / "run", device=args.device)
        args.batch_size = args.batch_size or default_batch_size(predictor.device)
        predictor.predict(paths[: args.batch_size], batch_size=args.batch_size)  # warm-up: kernels, caches
        batched_runs, loop_runs = [], []
        for _ in range(args.repeats):  # alternate, so a noisy neighbour hits both alike
            batched_runs.append(timed(lambda: predictor.predict(paths, batch_size=args.batch_size)))
            loop_runs.append(timed(lambda: [predictor.predict([p], batch_size=1) for p in paths]))
        batched, loop = min(batched_runs), min(loop_runs)

    result = {
        "model": args.model, "input_size": args.size, "images": args.images, "batch_size": args.batch_size,
        "device": str(predictor.device), "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats, "batched_s": round(batched, 3), "loop_s": round(loop, 3),
        "batched_images_per_s": round(args.images / batched, 1), "loop_images_per_s": round(args.images / loop, 1),
        "speedup": round(loop / batched, 2),
    }
    print(f"Inference, {args.model} @ {args.size}px, {args.images} images on {result['device']}:")
    print(f"  batched (batch {args.batch_size}): {batched:.2f} s  ({result['batched_images_per_s']} images/s)")
    print(f"  per-image loop:      {loop:.2f} s  ({result['loop_images_per_s']} images/s)")
    print(f"  batched is {result['speedup']}x faster")
    write_result(RESULTS, result)
    return result


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

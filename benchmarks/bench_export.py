"""ONNX Runtime vs PyTorch eager on the CPU, side by side in one run: latency and throughput.

    python benchmarks/bench_export.py                                  # demo model and eva02_tiny @ 224
    python benchmarks/bench_export.py --models test_vit:64 --iters 50 --threads 2

For each model: a randomly initialised checkpoint (weights do not change the speed),
exported with `sustain.deploy.export.export_onnx` (fp32) and `quantize_int8`. The timed call is
the model on a batch of preprocessed uint8 pixels (decoding and resizing are the same
for both backends and left out): ``PixelModel(model)(pixels)`` under ``inference_mode``
against ``session.run``. Batch 1 and 8; the backends alternate batch by batch (so a busy
neighbour hits both alike) and the median counts. Both use the same thread count.
Also prints the agreement of the answers on these inputs, the file sizes and the load
average before and after. Writes benchmarks/results/bench_export.json.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if not __package__:  # run as a script: the project root on sys.path, for `benchmarks` and `sustain`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import arg_parser, results_file, write_result  # noqa: E402
from benchmarks.inputs import write_checkpoint  # noqa: E402
from sustain.deploy.export import PixelModel, export_onnx, quantize_int8  # noqa: E402
from sustain.deploy.loading import load_checkpoint_model  # noqa: E402

RESULTS = results_file("bench_export")
DEFAULT_MODELS = ("test_vit:64", "eva02_tiny_patch14_224:224")


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_model(name: str, size: int, batches: list[int], iters: int, threads: int, tmp: Path) -> dict:
    run = tmp / name
    write_checkpoint(run, name, size)
    loaded = load_checkpoint_model(run, "cpu")
    fp32 = export_onnx(loaded.model, loaded.meta, run / "model.onnx")
    int8 = quantize_int8(fp32, run / "model_int8.onnx")
    torch_model = PixelModel(loaded.model, tuple(loaded.meta["mean"]), tuple(loaded.meta["std"])).eval()
    sessions = {"onnx_fp32": session(fp32, threads), "onnx_int8": session(int8, threads)}

    def run_torch(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch_model(torch.from_numpy(x)).numpy()

    backends = {"torch": run_torch, **{k: (lambda x, s=s: s.run(None, {"image": x})[0]) for k, s in sessions.items()}}
    rng = np.random.default_rng(0)
    out: dict = {"model": name, "input_size": size, "fp32_bytes": fp32.stat().st_size,
                 "int8_bytes": int8.stat().st_size, "batches": {}}
    for batch in batches:
        x = rng.integers(0, 256, (batch, 3, size, size), dtype=np.uint8)
        answers = {k: fn(x) for k, fn in backends.items()}  # warm-up, and the answers to compare
        times: dict[str, list[float]] = {k: [] for k in backends}
        for _ in range(iters):
            for k, fn in backends.items():  # alternate backends call by call
                t = time.perf_counter()
                fn(x)
                times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        out["batches"][batch] = {
            "ms_per_batch": {k: round(1000 * v, 3) for k, v in med.items()},
            "images_per_s": {k: round(batch / v, 1) for k, v in med.items()},
            "speedup_vs_torch": {k: round(med["torch"] / v, 2) for k, v in med.items() if k != "torch"},
            "max_abs_logit_diff": {k: float(np.abs(answers[k] - answers["torch"]).max()) for k in sessions},
            "top1_agree": {k: float(np.mean(answers[k].argmax(1) == answers["torch"].argmax(1))) for k in sessions},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="NAME:SIZE")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--iters", type=int, default=30, help="timed calls per backend and batch size")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for both backends")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="sustain_bench_export_") as tmp:
        for spec in args.models:
            name, size = spec.split(":")
            results.append(bench_model(name, int(size), args.batches, args.iters, args.threads, Path(tmp)))
    report = {"threads": args.threads, "iters": args.iters, "results": results}
    for r in results:
        print(f"{r['model']} @ {r['input_size']}px: ONNX fp32 {r['fp32_bytes'] / 1e6:.1f} MB, "
              f"int8 {r['int8_bytes'] / 1e6:.1f} MB")
        for batch, b in r["batches"].items():
            ms = b["ms_per_batch"]
            print(f"  batch {batch}: torch {ms['torch']:.2f} ms, onnx fp32 {ms['onnx_fp32']:.2f} ms "
                  f"({b['speedup_vs_torch']['onnx_fp32']}x), onnx int8 {ms['onnx_int8']:.2f} ms "
                  f"({b['speedup_vs_torch']['onnx_int8']}x); top-1 agreement fp32 {b['top1_agree']['onnx_fp32']:.0%}, "
                  f"int8 {b['top1_agree']['onnx_int8']:.0%}")
    print(f"{args.threads} thread(s) per backend; written: {write_result(RESULTS, report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

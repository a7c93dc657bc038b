"""Training-step throughput on synthetic data: Sustain's guarded step against a plain timm step.

    python -m benchmarks.gpu_step --out step.json                    # EVA02-Base, bf16, batch 64 and 128
    python -m benchmarks.gpu_step --cpu --out step.json              # the dry run: test_vit at 32 px

Part of benchmarks/gpu_check.sh. The batch is a tensor already on the device,
so the loader is not in the way. For each batch size, with and without
`torch.compile`, in one process and on the same weights:
- **sustain**: the engine's own training loop (loss guard, gradient-norm guard,
  clipping, schedule, counters, progress bar), fed the in-memory batch;
- **plain**: what timm's train.py does per step: forward, cross-entropy, backward,
  clip, optimizer step; the same model, optimizer factory, batch and precision.
The two alternate for `--rounds` timed windows each, and the faster window
counts. MFU = measured FLOP/s (forward + backward, counted once by
`torch.utils.flop_counter.FlopCounterMode`) / the GPU's dense bf16 peak from
its datasheet; `matmul_bf16_tflops` is what a large bf16 matrix product
reaches on it, the practical ceiling.
Peak memory is the most allocated during a timed window.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

if not __package__:  # run as a script: the project root on sys.path, for `benchmarks` and `sustain`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, arg_parser, write_result  # noqa: E402
from sustain.config import Config, load_config  # noqa: E402
from sustain.device import (  # noqa: E402
    DevicePlan,
    PrecisionPlan,
    apply_backend_flags,
    detect_backends,
    plan_channels_last,
    plan_device,
)

log = logging.getLogger("benchmarks.gpu_step")

# Dense bf16 tensor-core peaks (vendor datasheets, TFLOP/s), most specific name first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.4), ("H200", 989.4), ("H100 NVL", 835.5), ("H100 PCIe", 756.5), ("H100", 989.4),
    ("H800", 989.4), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.1), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0),
)

GPU_CASE = {"overrides": ["model.pretrained=false"], "batches": [64, 128], "compile_batches": [128],
            "warmup": 3, "steps": 20}
CPU_CASE = {"overrides": ["model.pretrained=false", "model.name=test_vit", "model.input_size=32"],
            "batches": [4, 8], "compile_batches": [8], "warmup": 1, "steps": 3}


def peak_bf16_flops(device_name: str | None) -> float | None:
    """The dense bf16 peak of a GPU by its name, in FLOP/s; None when unknown (and on the CPU)."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if device_name and key.lower() in device_name.lower():
            return tflops * 1e12
    return None


def matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float | None:
    """The bf16 n×n×n matrix-product rate this GPU reaches (a practical ceiling beside the datasheet's)."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return round(2 * n**3 * repeats / (time.perf_counter() - t) / 1e12, 1)


def synthetic_batch(batch: int, size: int, num_classes: int, device: torch.device):
    """A real `Batch` (the loader's type) of random images and one-hot targets, already on the device."""
    from sustain.data.dataset import Batch

    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.arange(batch, device=device) % num_classes
    targets = nn.functional.one_hot(labels, num_classes).float()
    return Batch(images, targets, torch.zeros(batch, dtype=torch.int64, device=device))


def autocast(device: torch.device, precision: PrecisionPlan) -> contextlib.AbstractContextManager:
    if not precision.autocast:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, precision.dtype))


def count_train_flops(model: nn.Module, batch, device: torch.device, precision: PrecisionPlan) -> int:
    """FLOPs of one forward and backward pass (eager), as FlopCounterMode counts the aten ops."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, autocast(device, precision):
        model(batch.images).float().logsumexp(dim=1).sum().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------- the two steps


def sustain_runner(cfg: Config, model: nn.Module, fwd_model: nn.Module, plan: DevicePlan,
                   precision: PrecisionPlan, device: torch.device, batch) -> Callable[[int], dict[str, Any]]:
    """run(steps): one epoch of the engine's own training loop over `steps` copies of `batch`.

    The only coupling to the training loop's internals (sustain.training.loop, sustain.training.step): when the engine is
    restructured, this is the one function to update. Everything the loop does
    per step runs unchanged; only the DataLoader is replaced by the in-memory batch.
    """
    from sustain.taxonomy import build_taxonomy
    from sustain.training import loop
    from sustain.training.distributed import Distributed
    from sustain.training.guards import Guards
    from sustain.training.loop_state import LoopState
    from sustain.training.losses import PartialLabelLoss
    from sustain.training.optim import build_optimizer, build_scheduler
    from sustain.training.trainer import Trainer

    optimizer = build_optimizer(cfg.train, model)
    scheduler = build_scheduler(cfg.train, optimizer, updates_per_epoch=1000)
    state = LoopState()
    guards = Guards(cfg.guards, plan.type, precision, amp_on=precision.autocast)  # the loop sets each update's LR
    loaders = SimpleNamespace(train=itertools.repeat(batch), train_batches=0, set_epoch=lambda epoch, start=0: None)
    bundle = Trainer(
        cfg=cfg, taxonomy=build_taxonomy(**cfg.taxonomy.model_dump()), sources=["synthetic"],
        dist=Distributed(device=device), device=device, plan=plan, precision=precision,
        channels_last=False, out_dir=Path("."), meta={}, model=model, fwd_model=fwd_model, ema=None,
        loss_fn=PartialLabelLoss(label_smoothing=cfg.train.label_smoothing).to(device),
        val_loss_fn=PartialLabelLoss(), optimizer=optimizer, scheduler=scheduler,
        guards=guards, loaders=loaders)

    def run(steps: int) -> dict[str, Any]:
        loaders.train_batches = steps
        progress = loop.train_one_epoch(bundle, state, state.epoch + 1)
        state.epoch += 1
        return progress.epoch_stats(bundle.dist.sum)

    return run


def plain_runner(cfg: Config, model: nn.Module, fwd_model: nn.Module, precision: PrecisionPlan,
                 device: torch.device, batch) -> Callable[[int], dict[str, Any]]:
    """run(steps): timm train.py's step, no guards: forward, cross-entropy, backward, clip, step."""
    from timm.optim import create_optimizer_v2

    t = cfg.train
    optimizer = create_optimizer_v2(model, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay,
                                    layer_decay=t.layer_decay, filter_bias_and_bn=True)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    images, labels = batch.images, batch.targets.argmax(dim=1)

    def run(steps: int) -> dict[str, Any]:
        for _ in range(steps):
            with autocast(device, precision):
                loss = loss_fn(fwd_model(images), labels)
            loss.backward()
            if t.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return {"skipped": 0}

    return run


# --------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_window(run: Callable[[int], dict[str, Any]], steps: int, device: torch.device) -> tuple[float, int | None, int]:
    """(seconds, peak bytes allocated or None, skipped steps) of `steps` steps."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t = time.perf_counter()
    stats = run(steps)
    sync(device)
    seconds = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return seconds, peak, int(stats.get("skipped", 0))


def measure_pair(cfg: Config, model: nn.Module, compile_backend: str | None, plan: DevicePlan,
                 precision: PrecisionPlan, device: torch.device, batch, case: dict[str, Any],
                 rounds: int) -> dict[str, dict[str, Any]]:
    """Both steps on the same weights, alternating; the faster of `rounds` windows counts for each."""
    fwd_model = torch.compile(model, backend=compile_backend) if compile_backend else model
    runners = {"sustain": sustain_runner(cfg, model, fwd_model, plan, precision, device, batch),
               "plain": plain_runner(cfg, model, fwd_model, precision, device, batch)}
    best: dict[str, dict[str, Any]] = {}
    for kind, run in runners.items():
        t = time.perf_counter()
        run(case["warmup"])  # compiles, autotunes, fills the allocator's cache
        sync(device)
        best[kind] = {"warmup_s": round(time.perf_counter() - t, 2), "seconds": float("inf"), "peak": None,
                      "skipped": 0}
    for _ in range(rounds):
        for kind, run in runners.items():
            seconds, peak, skipped = timed_window(run, case["steps"], device)
            row = best[kind]
            row["skipped"] += skipped
            if seconds < row["seconds"]:
                row["seconds"], row["peak"] = seconds, peak
    del runners
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return best


def run_benchmark(cpu: bool, rounds: int, compile_backend: str | None,
                  save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every case in turn; `save(result)` after each, so a time-out still leaves the figures so far."""
    from sustain.model import build_model, parameter_summary

    case = CPU_CASE if cpu else GPU_CASE
    cfg = load_config(ROOT / "configs" / "eva02_master30.yaml", case["overrides"])
    plan = plan_device("cpu" if cpu else "cuda", detect_backends())
    apply_backend_flags(plan)  # TF32 and cuDNN autotuning, as a run sets them
    device = torch.device("cuda", 0) if plan.type == "cuda" else torch.device("cpu")
    precision = PrecisionPlan(autocast=True, dtype="bfloat16", grad_scaler=False)  # the bf16 plan, on any device
    num_classes = len(load_taxonomy(cfg).classes)
    model = build_model(cfg.model, num_classes, plan.type)
    size = cfg.model.input_size or model.pretrained_cfg["input_size"][-1]
    channels_last = plan_channels_last(cfg.model.channels_last, plan.type,
                                       sum(isinstance(m, nn.Conv2d) for m in model.modules()))
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format).train()
    peak = peak_bf16_flops(plan.name if plan.type == "cuda" else None)
    result: dict[str, Any] = {
        "model": cfg.model.name, "parameters": parameter_summary(model), "input_size": size,
        "device": plan.name, "precision": precision.label, "channels_last": channels_last,
        "peak_bf16_tflops": peak / 1e12 if peak else None, "matmul_bf16_tflops": matmul_tflops(device),
        "steps_per_window": case["steps"], "rounds": rounds,
        "compile_backend": compile_backend, "rows": [], "errors": [],
    }
    compiled_sizes = case["compile_batches"] if compile_backend else []
    for batch_size in case["batches"]:
        batch = synthetic_batch(batch_size, size, num_classes, device)
        flops_per_image = count_train_flops(model, batch, device, precision) / batch_size
        for compiled in [False] + ([True] if batch_size in compiled_sizes else []):
            if compiled:
                torch._dynamo.reset()  # each batch size compiles afresh, as a run with that batch would
            log.info("batch %d, %s", batch_size, f"torch.compile ({compile_backend})" if compiled else "eager")
            try:
                best = measure_pair(cfg, model, compile_backend if compiled else None, plan, precision, device,
                                    batch, case, rounds)
            except Exception as exc:  # a failed compile (or OOM) must not cost the other figures; reported
                log.exception("batch %d, compile=%s failed", batch_size, compiled)
                result["errors"].append({"batch": batch_size, "compile": compiled,
                                         "error": f"{type(exc).__name__}: {exc}"[:2000]})
                model.zero_grad(set_to_none=True)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            else:
                result["rows"].extend(case_rows(best, batch_size, compiled, flops_per_image, peak, case["steps"]))
            save(result)
    return result


def case_rows(best: dict[str, dict[str, Any]], batch_size: int, compiled: bool, flops_per_image: float,
              peak: float | None, steps: int) -> list[dict[str, Any]]:
    rows = []
    for kind, m in best.items():
        ips = steps * batch_size / m["seconds"]
        rows.append({
            "step": kind, "batch": batch_size, "compile": compiled, "images_per_s": round(ips, 1),
            "step_ms": round(1000 * m["seconds"] / steps, 2),
            "mfu": round(ips * flops_per_image / peak, 4) if peak else None,
            "tflops": round(ips * flops_per_image / 1e12, 2),
            "peak_memory_gib": round(m["peak"] / 2**30, 2) if m["peak"] is not None else None,
            "warmup_s": m["warmup_s"], "skipped_steps": m["skipped"],
            "gflops_per_image": round(flops_per_image / 1e9, 2)})
    rows.append({"step": "ratio sustain/plain", "batch": batch_size, "compile": compiled,
                 "ratio": round(best["plain"]["seconds"] / best["sustain"]["seconds"], 3)})
    return rows


def load_taxonomy(cfg: Config):
    from sustain.taxonomy import build_taxonomy

    return build_taxonomy(**cfg.taxonomy.model_dump())


def format_rows(result: dict[str, Any]) -> list[str]:
    lines = [f"{result['model']} at {result['input_size']} px, {result['precision']}, on {result['device']}"]
    for r in result["rows"]:
        mode = "compiled" if r["compile"] else "eager"
        if "ratio" in r:
            lines.append(f"  batch {r['batch']:4d} {mode:8s} sustain / plain images/s = {r['ratio']:.3f}")
            continue
        mfu = f"MFU {100 * r['mfu']:5.1f}%" if r["mfu"] is not None else "MFU    n/a"
        mem = f"{r['peak_memory_gib']:6.2f} GiB" if r["peak_memory_gib"] is not None else "       n/a"
        lines.append(f"  batch {r['batch']:4d} {mode:8s} {r['step']:8s} {r['images_per_s']:9.1f} img/s "
                     f"{r['step_ms']:8.2f} ms/step  {mfu}  peak {mem}  (warm-up {r['warmup_s']} s)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--cpu", action="store_true", help="the dry run: a tiny model on the CPU")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--rounds", type=int, default=2, help="timed windows per step kind (the faster counts)")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default: inductor on the GPU; for --cpu, eager: graph capture "
                             "without code generation, which takes minutes on a small CPU); 'none' skips")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    backend = args.compile_backend or ("eager" if args.cpu else "inductor")
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_step: no CUDA GPU here; use --cpu for the dry run", file=sys.stderr)
        return 2
    if args.cpu:
        torch.set_num_threads(1)  # a tiny model steps fastest on one thread (see tests/engine_helpers.py)
    def save(result: dict[str, Any]) -> None:
        write_result(args.out, result)

    result = run_benchmark(args.cpu, args.rounds, None if backend == "none" else backend, save)
    for line in format_rows(result):
        print(line)
    for error in result["errors"]:
        print(f"FAILED: batch {error['batch']}, compile={error['compile']}: {error['error']}", file=sys.stderr)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

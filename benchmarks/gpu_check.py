"""The Python sections of benchmarks/gpu_check.sh (read that script first).

    python -m benchmarks.gpu_check env --out env.json         # GPU, driver, CUDA, torch, timm, ...
    python -m torch.distributed.run --standalone --nproc_per_node=1 \\
        -m benchmarks.gpu_check ddp --out ddp.json            # NCCL (gloo with --cpu) under torchrun
    python -m benchmarks.gpu_check loader --out loader.json   # the training DataLoader on this machine's cores

Each section writes one JSON file; benchmarks/gpu_summary.py merges them (and the step
benchmark of benchmarks/gpu_step.py, the `cuda` tests' JUnit XML and the demo
run's run.json) into the one file the script leaves in its output folder.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

if not __package__:  # run as a script: the project root on sys.path, for `benchmarks` and `sustain`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, arg_parser, write_result  # noqa: E402
from benchmarks.inputs import sample_photos  # noqa: E402
from sustain.utils import cpu_count  # noqa: E402


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # a missing optional package is recorded as None, not fatal
        return None


# --------------------------------------------------------------------------- env


def gather_env() -> dict[str, Any]:
    """What this check ran on and with: hardware, driver and the versions of everything that matters."""
    env: dict[str, Any] = {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": platform.platform(), "python": platform.python_version(), "cpu_cores": cpu_count(),
        "versions": {m: _version(m) for m in ("torch", "torchvision", "timm", "numpy", "pydantic", "PIL", "triton")},
        "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
        "carried_wheels": os.environ.get("SUSTAIN_CARRIED_WHEELS") or None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "count": torch.cuda.device_count(),
                      "memory_gib": round(props.total_memory / 2**30, 1),
                      "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
                      "bf16": torch.cuda.is_bf16_supported(), "cudnn": torch.backends.cudnn.version(),
                      "nccl": _nccl_version(), "driver": _nvidia_smi("driver_version")}
    return env


def _nvidia_smi(field: str) -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                         text=True, check=False)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def cmd_env(args: argparse.Namespace) -> int:
    env = gather_env()
    gpu = env.get("gpu")
    print(f"GPU:    {gpu['name']} ×{gpu['count']}, {gpu['memory_gib']} GiB, sm_{gpu['capability']}, "
          f"driver {gpu['driver']}, CUDA {env['torch_cuda']}, cuDNN {gpu['cudnn']}, NCCL {gpu['nccl']}"
          if gpu else "GPU:    none (CPU dry run)")
    v = env["versions"]
    print(f"torch:  {v['torch']}   timm: {v['timm']}   torchvision: {v['torchvision']}   numpy: {v['numpy']}   "
          f"pydantic: {v['pydantic']}   python: {env['python']}   CPU cores: {env['cpu_cores']}")
    write_result(args.out, env)
    return 0


# --------------------------------------------------------------------------- ddp under torchrun


def cmd_ddp(args: argparse.Namespace) -> int:
    """Sustain's own DDP code (`sustain.training.distributed`) on the backend a run picks: NCCL on CUDA, gloo on the CPU.

    With one process a run skips DDP, so its collectives are switched on here
    for the single rank: process group, DDP wrapper with `no_sync`
    accumulation under bf16 autocast, and every collective the engine calls.
    """
    import torch.distributed as torch_dist

    from sustain.device import detect_backends, plan_device
    from sustain.training.distributed import Distributed

    class OneRankDDP(Distributed):
        @property
        def enabled(self) -> bool:
            return True

    if "WORLD_SIZE" not in os.environ:
        print("gpu_check ddp: run it under torchrun (see this module's docstring)", file=sys.stderr)
        return 2
    env = Distributed.from_env()
    dist = OneRankDDP(rank=env.rank, world=env.world, local_rank=env.local_rank)
    t0 = time.perf_counter()
    device = dist.init(plan_device("cpu" if args.cpu else "cuda", detect_backends()))
    model = dist.wrap(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(),
                                          torch.nn.Linear(64, 8)).to(device), device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(4):
        sync = step % 2 == 1  # accumulation over 2 micro-steps: all-reduce on the second only
        with torch.autocast(device.type, dtype=torch.bfloat16), (contextlib.nullcontext() if sync else model.no_sync()):
            loss = model(torch.randn(32, 64, device=device)).float().pow(2).mean()
            loss.backward()
        if sync:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    flags, sums = dist.all_true(True, False), dist.sum(1.5, 2.0)
    preds = SimpleNamespace(logits=torch.randn(3, 8), targets=torch.ones(3, 8), source_ids=torch.zeros(3))
    logits, _, _ = dist.gather_predictions(preds)
    rng = dist.gather_rng()
    allreduce_ms = timed_allreduce(torch_dist, device)
    dist.close()
    ok = (len(losses) == 2 and all(map(math.isfinite, losses)) and flags == (True, False) and sums == (1.5, 2.0)
          and torch.equal(logits, preds.logits) and len(rng) == dist.world)
    result = {"ok": ok, "backend": "nccl" if device.type == "cuda" else "gloo", "world_size": dist.world,
              "device": str(device), "nccl": _nccl_version() if device.type == "cuda" else None, "losses": losses,
              "allreduce_64mib_ms": allreduce_ms, "seconds": round(time.perf_counter() - t0, 2)}
    print(f"torchrun ×{dist.world} {result['backend']}: {'ok' if ok else 'FAILED'}, 64 MiB all-reduce "
          f"{allreduce_ms} ms")
    if dist.is_main:
        write_result(args.out, result)
    return 0 if ok else 1


def timed_allreduce(torch_dist, device: torch.device, mib: int = 64) -> float:
    payload = torch.ones(mib * 2**20 // 4, device=device)
    for _ in range(2):  # the first call sets up the communicator, the second is timed
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch_dist.all_reduce(payload)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return round(1000 * (time.perf_counter() - t), 3)


def _nccl_version() -> str:
    return ".".join(map(str, torch.cuda.nccl.version()))


# --------------------------------------------------------------------------- the loader


LOADER_CASES = {  # name: (image width, height, distinct files, images read, batch size)
    "gpu": {"256px": (256, 256, 64, 4096, 128), "camera_4032x3024": (4032, 3024, 8, 384, 32)},
    "cpu": {"256px": (256, 256, 8, 48, 8), "camera_4032x3024": (4032, 3024, 2, 6, 2)},
}


def loader_throughput(cfg, paths: list[Path], n_images: int, batch: int, workers: int, plan) -> dict[str, Any]:
    """Images/s of the real training DataLoader (decode, strong augmentation, collate, pinning) over `paths`."""
    import timm

    from sustain.data.manifest import ManifestRow
    from sustain.taxonomy import build_taxonomy
    from sustain.training.distributed import Distributed
    from sustain.training.loaders import build_loaders
    from sustain.transforms import build_eval_transform, build_train_transform, resolve_data_config

    taxonomy = build_taxonomy(**cfg.taxonomy.model_dump())
    source = cfg.data.sources[0].name
    rows = {split: [ManifestRow(str(paths[i % len(paths)]), source, taxonomy.classes[i % taxonomy.num_classes],
                                (i % taxonomy.num_classes,), split, f"h{i}", i) for i in range(n)]
            for split, n in (("train", n_images), ("val", 1), ("test", 0))}
    lake = SimpleNamespace(split=lambda name: rows.get(name, []), sources=[source])
    with torch.device("meta"):  # only its pretrained config is needed: no weights
        model = timm.create_model(cfg.model.name, pretrained=False, num_classes=taxonomy.num_classes)
    data_config = resolve_data_config(model, cfg.model)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": batch})})
    loaders = build_loaders(cfg, lake, taxonomy, build_train_transform(data_config, cfg.data),
                            build_eval_transform(data_config), plan, workers, Distributed())
    loaders.set_epoch(1)
    t0 = time.perf_counter()
    first = t = None
    images = failed = 0
    for i, b in enumerate(loaders.train):
        if i == 0:  # the workers' start-up is not throughput
            first, t = time.perf_counter() - t0, time.perf_counter()
            continue
        images += len(b)
        failed += b.failed
    seconds = time.perf_counter() - t if t is not None else 0.0
    del loaders
    return {"workers": workers, "batch": batch, "images_timed": images, "failed": failed,
            "images_per_s": round(images / seconds, 1) if seconds > 0 else None,
            "first_batch_s": round(first or 0.0, 2), "input_size": data_config["input_size"][-1]}


def cmd_loader(args: argparse.Namespace) -> int:
    from sustain.config import load_config
    from sustain.device import detect_backends, plan_device, plan_num_workers

    mode = "cpu" if args.cpu else "gpu"
    plan = plan_device("cpu" if args.cpu else "cuda", detect_backends())
    overrides = ["model.pretrained=false"] + (["model.name=test_vit", "model.input_size=32"] if args.cpu else [])
    cfg = load_config(ROOT / "configs" / "eva02_master30.yaml", overrides)
    cores = cpu_count()
    planned = plan_num_workers("auto", plan.type, cpu_count=cores, in_jupyter=False, platform=sys.platform)
    worker_counts = sorted({planned, max(1, cores - 1)})
    result: dict[str, Any] = {"cpu_cores": cores, "planned_workers": planned, "augment": cfg.data.augment,
                              "model": cfg.model.name, "rows": []}
    with tempfile.TemporaryDirectory(prefix="gpu_check_loader_") as tmp:
        for name, (w, h, files, n, batch) in LOADER_CASES[mode].items():
            t = time.perf_counter()
            paths = sample_photos(Path(tmp) / name, w, h, files)
            made = time.perf_counter() - t
            for workers in worker_counts:
                row = {"images": name, "file_mb": round(sum(p.stat().st_size for p in paths) / len(paths) / 1e6, 2),
                       **loader_throughput(cfg, paths, n, batch, workers, plan)}
                result["rows"].append(row)
                print(f"loader {name:18s} {workers:2d} workers, batch {batch:3d}: {row['images_per_s']} img/s "
                      f"(first batch {row['first_batch_s']} s; files {row['file_mb']} MB, made in {made:.1f} s)")
    write_result(args.out, result)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    sub = parser.add_subparsers(dest="section", required=True)
    for name, func in (("env", cmd_env), ("ddp", cmd_ddp), ("loader", cmd_loader)):
        p = sub.add_parser(name)
        p.add_argument("--out", type=Path, required=True, help="the JSON file to write")
        p.add_argument("--cpu", action="store_true", help="the dry run: CPU, gloo, tiny sizes")
        p.set_defaults(func=func)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""The benchmarks' one harness: machine facts, timing, repeats, JSON results, and the inputs they share.

A benchmark runs as a script (`python benchmarks/bench_x.py`) or as a module
(`python -m benchmarks.bench_x`); as a script it puts the project root on
sys.path itself before importing this module. Benchmarks import this module
and never each other.

Every result written with `write_result` carries a `provenance` block: the
command line, the commit, the date, the machine (CPU model, cores, ISA flags,
memory, load average when this module was imported and when the result was
written) and the versions of torch, timm and numpy, so a figure in the docs
can be traced to where and how it was measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
CLASSES = ("plastic_water_bottles", "aluminum_soda_cans", "glass_beverage_bottles", "cardboard_boxes")

# The load before the benchmark: taken when the benchmark imports this module.
LOAD_BEFORE = os.getloadavg()
# The CPU features that decide which kernels torch and Pillow use.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd", "sve")


def results_file(name: str) -> Path:
    """The default JSON file of benchmark `name`: benchmarks/results/<name>.json."""
    return RESULTS_DIR / f"{name}.json"


def arg_parser(doc: str | None) -> argparse.ArgumentParser:
    """The benchmark's parser, described by the first paragraph of its module docstring."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])


def write_result(path: Path, result: Any, *, echo: bool = False, end: str = "\n") -> Path:
    """Write `result` as indented JSON to `path` (folders created), with its provenance; with `echo`, print it first.

    A dict result gets a `provenance` key first; anything else is wrapped as
    `{"provenance": ..., "result": result}`.
    """
    body = dict(result) if isinstance(result, dict) else {"result": result}
    body.pop("provenance", None)
    text = json.dumps({"provenance": provenance(), **body}, indent=2)
    if echo:
        print(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + end, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- provenance


def provenance() -> dict[str, Any]:
    """Where, when and how this process ran: command, commit, date, machine, versions."""
    return {"command": command_line(), "commit": git_commit(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_facts(), "versions": versions()}


def command_line() -> str:
    """The command that started this process, as one would type it again (`python -m ...`)."""
    argv = list(getattr(sys, "orig_argv", sys.argv))
    if argv and Path(argv[0]).name.startswith("python"):
        argv[0] = "python"
    return shlex.join(argv)


def git_commit() -> dict[str, Any] | None:
    """The checked-out commit of the project and whether the tree had uncommitted changes; None outside git."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if sha is None:
        return None
    changed = git("status", "--porcelain", "--untracked-files=no", "--", "sustain", "benchmarks", "configs",
                  ":(exclude)benchmarks/results")  # a result rewritten by a run is not a code change
    return {"sha": sha, "dirty": bool(changed)}


def machine_facts() -> dict[str, Any]:
    """CPU model, cores, ISA flags, memory and the load average before and now."""
    cpuinfo = _read_text("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith(("model name", "Model", "Hardware"))), None)
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                  if line.startswith(("flags", "Features"))), [])
    facts: dict[str, Any] = {
        "cpu_model": model or platform.processor() or None, "cpu_arch": platform.machine(),
        "logical_cpus": os.cpu_count(), "usable_cores": _usable_cores(),
        "isa_flags": [f for f in ISA_FLAGS if f in flags], "memory_gib": _memory_gib(),
        "os": platform.platform(), "python": platform.python_version(),
        "load_average_before": [round(x, 2) for x in LOAD_BEFORE],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        facts["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        if torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def versions() -> dict[str, str | None]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {name: version(name) for name in ("torch", "timm", "numpy", "pillow", "onnxruntime")}


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _usable_cores() -> int:
    from sustain.utils import cpu_count

    return cpu_count()


def _memory_gib() -> float | None:
    for line in _read_text("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


# --------------------------------------------------------------------------- timing


def repeat_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `repeats` calls of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def timing_summary(seconds: list[float], digits: int = 4) -> dict[str, Any]:
    """Median, min and max of repeated timings, with the raw list, for a result file."""
    return {"median_s": round(statistics.median(seconds), digits), "min_s": round(min(seconds), digits),
            "max_s": round(max(seconds), digits), "repeats": len(seconds),
            "all_s": [round(s, digits) for s in seconds]}


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call of `fn`, with the GPU's queue drained before and after."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- shared inputs

def machine() -> dict[str, Any]:
    """What a figure needs beside it: the CPU (model, cores, native bf16), the load, the versions, the commit."""
    import os
    import platform
    import subprocess

    import timm
    import torch

    from sustain.device import cpu_flags, cpu_model_name, cpu_native_bf16

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"machine": {"cpu": cpu_model_name(), "cores": os.cpu_count(), "native_bf16": cpu_native_bf16(cpu_flags()),
                        "platform": platform.platform(), "load_average": [round(x, 2) for x in os.getloadavg()]},
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__},
            "commit": commit.stdout.strip() or None}


def make_folder(root: Path, image: tuple[int, int], count: int, seed: int = 0) -> None:
    """`count` JPEGs over CLASSES, 90% under train/ and 10% under val/: a shape per class on a textured ground."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = image
    small = (max(8, width // 8), max(8, height // 8))  # draw small, upsample: photo-like smoothness, fast
    for i in range(count):
        cls = i % len(CLASSES)
        split = "val" if i % 10 == 9 else "train"
        ground = rng.integers(0, 255, (small[1], small[0], 3), dtype=np.uint8)
        ground[:] = (ground * 0.3 + rng.integers(60, 200, 3) * 0.7).astype(np.uint8)
        x0, y0 = rng.integers(0, small[0] // 2), rng.integers(0, small[1] // 2)
        ground[y0:y0 + small[1] // 3 + cls * 2, x0:x0 + small[0] // 3] = (60 * cls + 30, 200 - 40 * cls, 90)
        img = Image.fromarray(ground).resize((width, height), Image.Resampling.BICUBIC)
        folder = root / split / CLASSES[cls]
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        (folder / f"{i:05d}.jpg").write_bytes(buf.getvalue())



def write_images(folder: Path, n: int, seed: int = 0, suffix: str = "png") -> list[Path]:
    """`n` random-pixel images of 200-400 px a side (phone photos, downscaled), for inference benchmarks."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = int(rng.integers(200, 400)), int(rng.integers(200, 400))  # phone-photo-ish, downscaled
        path = folder / f"img_{i:04d}.{suffix}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths



def sample_photos(folder: Path, width: int, height: int, n: int) -> list[Path]:
    """`n` JPEGs of real photographs (scikit-image's samples) scaled to width×height, with sensor noise."""
    import numpy as np
    from PIL import Image
    from skimage import data as samples

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photos = [samples.astronaut(), samples.coffee(), samples.chelsea(), samples.rocket()]
    paths = []
    for i in range(n):
        img = Image.fromarray(photos[i % len(photos)]).resize((width, height), Image.Resampling.BICUBIC)
        pixels = np.asarray(img, dtype=np.int16) + rng.integers(-4, 5, (height, width, 3), dtype=np.int16)
        path = folder / f"photo_{i:03d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def camera_photos(folder: Path, count: int, size: tuple[int, int] = (4032, 3024)) -> list[str]:
    """Camera-like JPEGs: smooth shapes from a small drawing, upsampled, with sensor noise; quality 92."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = rng.integers(0, 255, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-4, 5, img.shape, dtype=np.int16), 0, 255).astype(np.uint8)
        path = folder / f"photo_{i:03d}.jpg"
        Image.fromarray(img).save(path, "JPEG", quality=92)
        paths.append(str(path))
    return paths


def write_checkpoint(out: Path, model_name: str, size: int) -> None:
    """A best.pth of an untrained timm model in `out`, as a training run writes it (for inference benchmarks)."""
    import timm
    from timm.data import resolve_model_data_config

    from sustain.taxonomy import build_taxonomy
    from sustain.training.checkpoints import save_best, state_dict_copy

    taxonomy = build_taxonomy()
    kwargs = {"img_size": size, "drop_path_rate": 0.0}
    model = timm.create_model(model_name, pretrained=False, num_classes=taxonomy.num_classes, **kwargs)
    cfg = resolve_model_data_config(model)
    meta = {**taxonomy.to_dict(), "model_name": model_name, "num_classes": taxonomy.num_classes,
            "input_size": [3, size, size], "mean": list(cfg["mean"]), "std": list(cfg["std"]),
            "interpolation": cfg["interpolation"], "crop_pct": cfg["crop_pct"], "model_kwargs": kwargs,
            "epoch": 0, "val_acc": 0.0, "manifest_hash": "benchmark"}
    save_best(out, state_dict_copy(model), meta)


def ensure_lake(path: Path | None) -> Path:
    """`path` if it is a folder, else a fresh demo lake (`sustain data demo`, seed 0) in a temporary folder."""
    if path is not None and path.is_dir():
        return path
    from sustain.data.demo import make_demo_lake

    target = path or Path(tempfile.mkdtemp(prefix="bench_lake_")) / "demo"
    make_demo_lake(target, seed=0)
    return target


# --------------------------------------------------------------------------- serving (bench_serve, bench_litserve)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, bodies: list[bytes] | None, concurrency: int, warmup: float, duration: float,
               multipart: bool = False) -> dict:
    """``concurrency`` clients in a loop; only requests that start after the warm-up count.
    ``bodies`` None: ``GET /health``; else ``POST /predict``, raw or as multipart field ``file``."""
    import httpx
    import numpy as np

    latencies: list[float] = []
    errors: dict[str, int] = {}
    start = time.monotonic()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async def client(i: int, http: httpx.AsyncClient) -> None:
        n = i
        while (t := time.monotonic()) < stop_at:
            try:
                if bodies is None:
                    r = await http.get("/health")
                elif multipart:
                    r = await http.post("/predict", files={"file": ("photo.jpg", bodies[n % len(bodies)], "image/jpeg")})
                else:
                    r = await http.post("/predict", content=bodies[n % len(bodies)],
                                        headers={"Content-Type": "image/jpeg"})
                ok = r.status_code == 200
                key = None if ok else str(r.status_code)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            n += concurrency
            if t >= measure_from:
                if key is None:
                    latencies.append(time.monotonic() - t)
                else:
                    errors[key] = errors.get(key, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*[client(i, http) for i in range(concurrency)])
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {"requests": len(latencies), "requests_per_s": round(len(latencies) / duration, 1),
            "errors": errors, "latency_ms": {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)}}


def export(model_name: str, size: int, int8: bool, tmp: Path) -> Path:
    from sustain.deploy.export import export_run

    run = tmp / "run"
    write_checkpoint(run, model_name, size)
    export_run(run, ["onnx"], quantize="int8" if int8 else None, verify=False)
    return run / "export"


def cpu_and_cores() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}


def header(name: str, argv: list[str] | None, args) -> dict:
    """What the result JSON names first: the command, commit, machine, load and versions."""
    import onnxruntime
    import torch

    return {"command": f"python benchmarks/{name}.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip(),
            "machine": cpu_and_cores(), "load_avg_before": [round(v, 2) for v in os.getloadavg()],
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "onnxruntime": onnxruntime.__version__},
            "weights": "randomly initialised (speed does not depend on the weights)",
            "settings": {k: str(v) for k, v in vars(args).items() if k != "out"}}


def finish(report: dict, out: Path) -> int:
    report["load_avg_after"] = [round(v, 2) for v in os.getloadavg()]
    write_result(out, report)
    print(f"load average before {report['load_avg_before']}, after {report['load_avg_after']}; {out}")
    return 0

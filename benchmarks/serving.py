"""What the two serving benchmarks share (bench_serve.py, bench_litserve.py): a free port, the exported
model, the HTTP load generator, and the header and finish of their result JSON. Not a benchmark itself.
"""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, write_checkpoint, write_result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, bodies: list[bytes] | None, concurrency: int, warmup: float, duration: float,
               multipart: bool = False) -> dict:
    """``concurrency`` clients in a loop; only requests that start after the warm-up count.
    ``bodies`` None: ``GET /health``; else ``POST /predict``, raw or as multipart field ``file``."""
    import httpx

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


def machine() -> dict:
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
            "machine": machine(), "load_avg_before": [round(v, 2) for v in os.getloadavg()],
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "onnxruntime": onnxruntime.__version__},
            "weights": "randomly initialised (speed does not depend on the weights)",
            "settings": {k: str(v) for k, v in vars(args).items() if k != "out"}}


def finish(report: dict, out: Path) -> int:
    report["load_avg_after"] = [round(v, 2) for v in os.getloadavg()]
    write_result(out, report)
    print(f"load average before {report['load_avg_before']}, after {report['load_avg_after']}; {out}")
    return 0

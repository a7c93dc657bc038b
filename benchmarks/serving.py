"""What the two serving benchmarks (bench_serve, bench_litserve) share: a port, the HTTP load, the model.

The clients run in one asyncio process beside the server, on the same cores;
traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from benchmarks.inputs import write_checkpoint


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a server under test."""
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
    """An untrained `model_name` at `size` px through `sustain export` (ONNX, and int8 with `int8`): the folder."""
    from sustain.deploy.export import export_run

    run = tmp / "run"
    write_checkpoint(run, model_name, size)
    export_run(run, ["onnx"], quantize="int8" if int8 else None, verify=False)
    return run / "export"


def settings(args) -> dict:
    """What a serving result names beside its figures: the weights and every setting but the output file."""
    return {"weights": "randomly initialised (speed does not depend on the weights)",
            "settings": {k: str(v) for k, v in vars(args).items() if k != "out"}}

"""`sustain serve` under load: N concurrent clients against a real server process, beside offline `Predictor`.

    python benchmarks/bench_serve.py                                   # test_vit at 64 px, fp32, 5 s
    python benchmarks/bench_serve.py --model eva02_tiny_patch14_224 --size 112 --precision fp32 int8 --duration 60

Exports a randomly initialised model of the given architecture (the weights do not change the
speed; ``sustain export --no-verify``, plus ``--quantize int8`` for int8), writes ``--images``
JPEG photos (200-400 px, `inputs.write_images`), then for each precision:
- offline: ``Predictor.predict(paths, batch_size=--max-batch)`` on the same files, decode included;
- serving: ``sustain serve`` on 127.0.0.1 and ``--concurrency`` clients (httpx, asyncio, one
  process) posting the same JPEGs as raw bodies for ``--duration`` s after ``--warmup`` s:
  requests/s, images/s, p50/p95/p99 latency, errors, the server's RSS (sampled every 0.25 s);
- the HTTP ceiling: the same clients on ``GET /health``, which does no work.
The load generator shares the machine with the server, so the ceiling says what HTTP alone
allows here. Traffic goes to 127.0.0.1 only; counts and times are bounded; it stops by itself.
Writes benchmarks/results/bench_serve.json (or ``--out``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if not __package__:  # run as a script: the project root on sys.path, for `benchmarks` and `sustain`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, arg_parser, results_file, timed, write_result  # noqa: E402
from benchmarks.inputs import write_images  # noqa: E402
from benchmarks.serving import export, free_port, load, settings  # noqa: E402
from sustain.utils import cpu_count  # noqa: E402

MAX_CONCURRENCY, MAX_DURATION = 256, 600


def offline(onnx: Path, paths: list[Path], batch: int, threads: int, repeats: int = 3) -> dict:
    from sustain.deploy.inference import Predictor

    predictor = Predictor.from_onnx(onnx, "cpu", threads=threads)
    predictor.predict(paths[:batch], batch_size=batch)  # warm-up
    best = min(timed(lambda: predictor.predict(paths, batch_size=batch)) for _ in range(repeats))
    return {"images": len(paths), "batch_size": batch, "seconds": round(best, 3),
            "images_per_s": round(len(paths) / best, 1)}




def start_server(model: Path, args, log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "sustain", "serve", str(model), "--port", str(port), "--host", "127.0.0.1",
           "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).json().get("ready"):
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError(log.read_text()[-2000:])


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.25):
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            self.samples.append((time.monotonic(), kb / 1024))




def serving(model: Path, paths: list[Path], args, tmp: Path) -> dict:
    proc, url = start_server(model, args, tmp / f"serve_{model.stem}.log")
    sampler = RssSampler(proc.pid)
    try:
        bodies = [p.read_bytes() for p in paths]
        sampler.start()
        t0 = time.monotonic()
        served = asyncio.run(load(url, bodies, args.concurrency, args.warmup, args.duration))
        served["images_per_s"] = served["requests_per_s"]  # one image per request
        ceiling = asyncio.run(load(url, None, args.concurrency, 1.0, min(args.duration, 10.0)))
        sampler.stop.set()
        sampler.join()
        after_warmup = [mb for t, mb in sampler.samples if t >= t0 + args.warmup]
        served["rss_mb"] = {"after_warmup": round(after_warmup[0], 1), "peak": round(max(after_warmup), 1),
                            "end": round(after_warmup[-1], 1)} if after_warmup else None
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"serving": served, "http_ceiling_health": ceiling}






def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--model", default="test_vit")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--precision", nargs="+", choices=["fp32", "int8"], default=["fp32"])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=results_file("bench_serve"))
    args = parser.parse_args(argv)
    if not (1 <= args.concurrency <= MAX_CONCURRENCY and 0 < args.duration <= MAX_DURATION):
        parser.error(f"--concurrency 1..{MAX_CONCURRENCY}, --duration up to {MAX_DURATION} s")

    cores = cpu_count()
    report = {**settings(args), "results": {}}
    with tempfile.TemporaryDirectory(prefix="sustain_bench_serve_") as tmp_name:
        tmp = Path(tmp_name)
        folder = export(args.model, args.size, "int8" in args.precision, tmp)
        paths = write_images(tmp / "photos", args.images, suffix="jpg")
        for precision in args.precision:
            onnx = folder / ("model_int8.onnx" if precision == "int8" else "model.onnx")
            row = {"offline": offline(onnx, paths, args.max_batch, cores), **serving(onnx, paths, args, tmp)}
            s, off, ceil = row["serving"], row["offline"], row["http_ceiling_health"]
            row["ratios"] = {"serving_vs_offline": round(s["images_per_s"] / off["images_per_s"], 3),
                             "serving_vs_http_ceiling": round(s["requests_per_s"] / max(ceil["requests_per_s"], 1e-9), 3),
                             "p99_over_p50": round(s["latency_ms"]["p99"] / max(s["latency_ms"]["p50"], 1e-9), 2)}
            row["binds"] = "http" if ceil["requests_per_s"] < off["images_per_s"] else "model"
            report["results"][precision] = row
            print(f"{args.model}@{args.size} {precision}: offline {off['images_per_s']} img/s; serving "
                  f"{s['images_per_s']} img/s (p50 {s['latency_ms']['p50']} ms, p99 {s['latency_ms']['p99']} ms, "
                  f"errors {s['errors']}, RSS {s['rss_mb']}); HTTP ceiling {ceil['requests_per_s']} req/s; "
                  f"{row['ratios']}")
    print(f"written: {write_result(args.out, report)}")
    return 0






if __name__ == "__main__":
    sys.exit(main())

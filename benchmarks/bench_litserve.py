"""`sustain serve` (FastAPI + an asyncio batching queue) against LitServe, same model, clients and machine.

    pip install --target /tmp/litserve litserve==0.2.19 --no-deps   # not a Sustain dependency
    python benchmarks/bench_litserve.py --litserve-path /tmp/litserve --duration 30

Both servers run the same `Predictor` (ONNX Runtime, the demo model test_vit at 64 px by default,
randomly initialised), with up to 16 images per forward pass after at most 5 ms, one worker, on
127.0.0.1; each is measured alone with ``--concurrency`` httpx clients posting the same JPEGs as
multipart field ``file`` (LitServe reads uploads through FastAPI's form parser), then its
``/health`` as the HTTP ceiling. Writes benchmarks/results/bench_litserve.json.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, arg_parser, results_file, write_result  # noqa: E402
from benchmarks.inputs import write_images  # noqa: E402
from benchmarks.serving import export, free_port, load, settings  # noqa: E402
from sustain.utils import cpu_count  # noqa: E402

APP = '''
import sys
import litserve as ls
from sustain.data import load_rgb
from sustain.deploy import Predictor

MODEL, PORT, THREADS, BATCH, WAIT = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])


class SustainAPI(ls.LitAPI):
    def setup(self, device):
        self.predictor = Predictor.from_onnx(MODEL, "cpu", threads=THREADS)

    def decode_request(self, request):
        return load_rgb(request["file"].file.read())

    def predict(self, images):
        out = self.predictor.predict(list(images), topk=3, batch_size=len(images))
        return [{k: v for k, v in p.to_dict().items() if k not in ("input", "error")} for p in out]

    def encode_response(self, output):
        return output


if __name__ == "__main__":
    api = SustainAPI(max_batch_size=BATCH, batch_timeout=WAIT / 1000)
    ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60).run(
        port=PORT, generate_client_file=False)
'''


def wait_ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    import httpx

    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-2000:])
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(log.read_text()[-2000:])


def measure(cmd: list[str], env: dict, bodies: list[bytes], args, log: Path) -> dict:
    port = free_port()
    proc = subprocess.Popen([*cmd[:1], *[c.replace("PORT", str(port)) for c in cmd[1:]]],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log)
        asyncio.run(load(url, bodies, args.concurrency, 1.0, 2.0, multipart=True))  # warm both alike
        served = asyncio.run(load(url, bodies, args.concurrency, args.warmup, args.duration, multipart=True))
        ceiling = asyncio.run(load(url, None, args.concurrency, 1.0, min(args.duration, 10.0)))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        errors = [line for line in log.read_text().splitlines() if "Error" in line or "Traceback" in line]
        if errors:
            print(f"{log.name}: {len(errors)} error lines, the last: {errors[-5:]}")
    return {"serving": served, "http_ceiling_health": ceiling}


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--litserve-path", required=True, help="where litserve is installed (pip --target)")
    parser.add_argument("--model", default="test_vit")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=results_file("bench_litserve"))
    args = parser.parse_args(argv)
    cores = cpu_count()
    report = {**settings(args), "results": {}}
    with tempfile.TemporaryDirectory(prefix="sustain_bench_litserve_") as tmp_name:
        tmp = Path(tmp_name)
        onnx = export(args.model, args.size, False, tmp) / "model.onnx"
        bodies = [p.read_bytes() for p in write_images(tmp / "photos", 64, suffix="jpg")]
        (tmp / "lit_app.py").write_text(APP)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), args.litserve_path])}
        commands = {
            "sustain_serve": [sys.executable, "-m", "sustain", "serve", str(onnx), "--port", "PORT",
                              "--max-batch", "16", "--max-wait-ms", "5"],
            "litserve": [sys.executable, str(tmp / "lit_app.py"), str(onnx), "PORT", str(cores), "16", "5"],
        }
        for name, cmd in commands.items():
            row = measure(cmd, env, bodies, args, tmp / f"{name}.log")
            report["results"][name] = row
            s = row["serving"]
            print(f"{name}: {s['requests_per_s']} img/s, p50 {s['latency_ms']['p50']} ms, p99 {s['latency_ms']['p99']} ms, "
                  f"errors {s['errors']}; /health {row['http_ceiling_health']['requests_per_s']} req/s")
    print(f"written: {write_result(args.out, report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

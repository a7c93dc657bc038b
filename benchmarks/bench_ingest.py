"""Ingest benchmark: cold and warm `ingest` of a synthetic lake of small images (issue 3).

    python -m benchmarks.bench_ingest --n 100000 [--dir DIR] [--workers auto] [--json FILE]
    python -m benchmarks.bench_ingest --camera 8     # decode_file on 4032x3024 JPEGs: full vs draft

Targets on a 2-core machine: cold <= 60 s, warm <= 3 s, peak RSS <= 1 GB.

The lake (N images of 32x32 noise, 90% JPEG and 10% PNG, spread over the 30
master_30 class folders of one `identity` source) is generated once into
DIR and reused. Each ingest runs in a fresh Python process, so its peak RSS
is its own: "cold" with an empty decode cache, "warm" right after it. The
times are those of the `ingest` call (manifest files written included),
without the interpreter start-up. Memory: the process's peak RSS, and the
peak of its RSS plus that of its decode workers, sampled every 50 ms.

`--camera N`: the cold cost per camera photo instead. `scan.decode_file` on N
real photographs (scikit-image's samples) and N synthetic ones, all 4032x3024
JPEGs, in one process on one core, once decoding in full for the signatures
and once at the draft scale ingestion uses (`scan.SIGNATURE_DRAFT_SIDE`),
alternating photo by photo so both see the same machine load; plus the
largest difference between the two signatures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from benchmarks.common import arg_parser, write_result
from benchmarks.inputs import camera_photos, sample_photos

MARKER = "bench_lake.json"


def make_synthetic_lake(root: Path, n: int, seed: int = 0, size: int = 32) -> Path:
    """N distinct noise images under root/synthetic/<class>/; reused when already there."""
    from sustain.taxonomy import MASTER_30

    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("n") == n:
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for c in MASTER_30:
        (root / "synthetic" / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cls = MASTER_30[i % len(MASTER_30)]
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        ext = "png" if i % 10 == 0 else "jpg"
        Image.fromarray(pixels).save(root / "synthetic" / cls / f"img_{i:07d}.{ext}", quality=90)
    marker.write_text(json.dumps({"n": n, "seed": seed, "size": size}))
    return root


def _config(lake: Path, work: Path, workers: str):
    from sustain.config import config_from_dict

    return config_from_dict({
        "output_dir": str(work / "out"),
        "data": {
            "root": str(lake),
            "cache_dir": str(work / "cache"),
            "ingest_workers": workers if workers == "auto" else int(workers),
            "sources": [{"name": "synthetic", "root": "synthetic", "label_map": "identity"}],
        },
    })


def measure_once(lake: Path, work: Path, workers: str) -> dict:
    """One ingest in this process: seconds, images, and peak RSS of this process and its workers."""
    from sustain.data.lake import ingest
    from sustain.taxonomy import build_taxonomy

    cfg = _config(lake, work, workers)
    sampler = _TotalRssSampler()
    sampler.start()
    start = time.perf_counter()
    result = ingest(cfg, build_taxonomy(), out_dir=cfg.output_dir, log_summary=False)
    seconds = time.perf_counter() - start
    sampler.stop()
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {
        "seconds": round(seconds, 3),
        "images": len(result.rows),
        "decoded": result.data_summary.decode["decoded"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, 1),
        "peak_total_rss_mb": round(sampler.peak / 2**20, 1),
    }


class _TotalRssSampler(threading.Thread):
    """Peak of (this process + its worker processes) RSS, sampled every 50 ms.

    getrusage(RUSAGE_CHILDREN) would also count short-lived forks (a library
    runs `lscpu`) at their parent's size, so the workers are sampled instead.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self._stop_event.is_set():
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop_event.wait(0.05)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def camera_decode(n: int) -> dict:
    """ms per 4032x3024 JPEG in decode_file, full vs draft decode, measured side by side (best of 2 each)."""
    from sustain.data import scan
    from sustain.data.split import hamming, signatures_array

    draft_side = scan.SIGNATURE_DRAFT_SIDE
    times: dict[str, list[float]] = {"full": [], "draft": []}
    worst = {"real": [0, 0], "synthetic": [0, 0]}  # most bits any hash moved, largest colour-mean change
    with tempfile.TemporaryDirectory(prefix="sustain_bench_camera_") as tmp:
        paths = [str(p) for p in sample_photos(Path(tmp) / "real", 4032, 3024, n)]
        paths += camera_photos(Path(tmp), n)
        for i, path in enumerate(paths):
            kind = "real" if i < n else "synthetic"
            sigs, best = {}, {"full": float("inf"), "draft": float("inf")}
            for mode in ("full", "draft", "full", "draft"):
                scan.SIGNATURE_DRAFT_SIDE = draft_side if mode == "draft" else None
                start = time.perf_counter()
                result = scan.decode_file(path, 10**9)
                best[mode] = min(best[mode], time.perf_counter() - start)
                sigs[mode] = signatures_array([result.signature])
            scan.SIGNATURE_DRAFT_SIDE = draft_side
            for mode, seconds in best.items():
                times[mode].append(seconds)
            for name in sigs["full"].dtype.names:
                a, b = sigs["full"][name].ravel(), sigs["draft"][name].ravel()
                if a.dtype.itemsize == 8:
                    moved = int(hamming(a.astype(np.uint64), b.astype(np.uint64)).max())
                    worst[kind][0] = max(worst[kind][0], moved)
                else:
                    worst[kind][1] = max(worst[kind][1], int(np.abs(a.astype(int) - b.astype(int)).max()))
    ms = {mode: round(1000 * float(np.mean(t)), 1) for mode, t in times.items()}
    return {"photos": len(times["full"]), "size": "4032x3024", "draft_side": draft_side, "ms_per_photo": ms,
            "speedup": round(ms["full"] / ms["draft"], 2), "max_hash_bits": {k: v[0] for k, v in worst.items()},
            "max_colour": {k: v[1] for k, v in worst.items()}}


def _run_phase(lake: Path, work: Path, workers: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_ingest", "--measure", "--dir", str(lake),
                          "--work", str(work), "--workers", workers],
                         check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="images in the synthetic lake")
    parser.add_argument("--dir", type=Path, help="where the lake is generated and reused (default: a temp dir)")
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", default="auto", help="data.ingest_workers")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--camera", type=int, metavar="N",
                        help="instead: decode_file ms per 4032x3024 photo, full vs draft, on N real + N synthetic")
    args = parser.parse_args(argv)

    if args.camera:
        result = camera_decode(args.camera)
        print(json.dumps(result))
        if args.json:
            write_result(args.json, result)
        return 0

    if args.measure:
        print(json.dumps(measure_once(args.dir, args.work, args.workers)))
        return 0

    lake = args.dir or Path(tempfile.gettempdir()) / f"sustain_bench_lake_{args.n}"
    start = time.perf_counter()
    make_synthetic_lake(lake, args.n)
    generate = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="sustain_bench_") as tmp:
        work = Path(tmp)
        cold = _run_phase(lake, work, args.workers)
        warm = _run_phase(lake, work, args.workers)
    result = {"n": args.n, "workers": args.workers, "generate_seconds": round(generate, 1),
              "cold": cold, "warm": warm}
    print(f"ingest of {args.n:,} images on {os.cpu_count()} CPUs (workers={args.workers}):")
    for phase in ("cold", "warm"):
        r = result[phase]
        print(f"  {phase}: {r['seconds']:.2f} s, {r['images']:,} images ({r['decoded']:,} decoded), "
              f"peak RSS {r['peak_rss_mb']:.0f} MB (with its workers {r['peak_total_rss_mb']:.0f} MB)")
    if args.json:
        write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The train loader on camera photos: images/s per core with and without the image cache.

    python benchmarks/bench_loader.py                 # 24 photos of 4032x3024, 224 px input
    python benchmarks/bench_loader.py --photos 48 --size 224

In one process, on one core (no workers, one thread), the strong train
transform (random-resized crop from 0.08, flip, RandAugment m9) of each photo:
- `original`: data.image_cache off: the full photo is decoded every epoch;
- `cache auto`: the stored copy at the eval resize (input / crop_pct);
- `cache crop`: the stored copy at input / sqrt(0.08), big enough that the
  smallest crop is never upsampled;
and, per cache size, the one-off cost of filling an entry and its disk use.
Goal: >= 100 img/s per core from the cache (7.5 from the originals).
Writes benchmarks/results/bench_loader.json.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

if not __package__:  # run as a script: the project root on sys.path, for `benchmarks` and `sustain`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import arg_parser, results_file, write_result  # noqa: E402
from benchmarks.inputs import camera_photos  # noqa: E402
from sustain.config import DataConfig  # noqa: E402
from sustain.data.image_cache import ImageCache, disk_usage  # noqa: E402
from sustain.data.scan import load_rgb  # noqa: E402
from sustain.transforms import build_train_transform  # noqa: E402

RESULTS = results_file("bench_loader")


def per_second(paths: list[str], load, tf) -> float:
    t = time.perf_counter()
    for p in paths:
        tf(load(p))
    return len(paths) / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data_config = {"input_size": (3, args.size, args.size), "mean": (0.5,) * 3, "std": (0.5,) * 3,
                   "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center"}
    tf = build_train_transform(data_config, DataConfig(sources=[{"name": "x", "root": ".", "label_map": "identity"}]))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        paths = camera_photos(Path(tmp), args.photos)
        original = per_second(paths, load_rgb, tf)
        rows.append({"pipeline": "original", "img_per_s_per_core": round(original, 1)})
        for name, side in (("cache auto", math.ceil(args.size / 0.875)),
                           ("cache crop", math.ceil(args.size / math.sqrt(0.08)))):
            cache = ImageCache(os.path.join(tmp, f"cache_{side}"), side)
            fill = per_second(paths, cache.load, tf)
            hit = per_second(paths, cache.load, tf)
            usage = disk_usage(cache.directory)
            rows.append({"pipeline": f"{name} ({side} px)", "img_per_s_per_core": round(hit, 1),
                         "fill_img_per_s": round(fill, 1), "kb_per_image": round(usage["bytes_per_image"] / 1e3, 1),
                         "speedup": round(hit / original, 1)})
    load = os.getloadavg()[0]
    print(f"\ntrain transform on {args.photos} photos of 4032x3024 at {args.size} px, one core (load {load:.1f}):")
    for r in rows:
        extra = (f"  fill {r['fill_img_per_s']:.1f} img/s, {r['kb_per_image']:.0f} KB/image, {r['speedup']}x"
                 if "fill_img_per_s" in r else "")
        print(f"  {r['pipeline']:<22} {r['img_per_s_per_core']:>7.1f} img/s per core{extra}")
    print("goal: >= 100 img/s per core from the cache")
    write_result(RESULTS, {"load": load, "rows": rows}, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

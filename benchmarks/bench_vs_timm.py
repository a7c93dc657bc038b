"""`sustain train` against timm's own train.py, whole commands side by side, in one run.

    python benchmarks/bench_vs_timm.py --timm /path/to/pytorch-image-models
    python benchmarks/bench_vs_timm.py --timm ~/timm-src --only photos --epochs 3

timm's train.py is not part of the timm wheel; get the source tree with
`git clone https://github.com/huggingface/pytorch-image-models` and pass its
folder (or its train.py). It runs with this environment's installed timm.
Without --timm the benchmark prints how to get it and exits 0 (skipped).

Two cases, each on one generated ImageFolder (`train/<class>/`, `val/<class>/`):
- `jpeg256`: 256 px JPEGs, resnet18 at 128 px;
- `photos`: 4032x3024 camera-like JPEGs, a tiny model at 224 px (loader-bound).
Both tools get the same model, input size, batch, epochs and augmentation
(RandomResizedCrop from 0.08, flip, RandAugment m9 capped at 9: timm's
RandAugment crashes on Pillow 13 without `mmax9`). timm gets `-j WORKERS`;
Sustain plans its own threads and workers from measurements (data.num_workers:
auto) unless --sustain-workers is given. Sustain trains on its 90% train split
of all the images (val 10%, no test split), timm on `train/` (90%) with `val/`
for validation, so both see the same number of training images per epoch.
Each tool starts cold: Sustain's decode and image caches are empty.

The time is the wall clock of the whole command, imports and ingestion
included. Prints a table and the ratio timm time / Sustain time (> 1: Sustain
finished first). Writes benchmarks/results/bench_vs_timm.json.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

if not __package__:  # run as a script: the project root on sys.path, for `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, arg_parser, results_file, write_result  # noqa: E402

RESULTS = results_file("bench_vs_timm")
HOW_TO_GET = ("timm's train.py is needed: `git clone https://github.com/huggingface/pytorch-image-models` "
              "(or the lead's library `fetch` tool) and pass --timm <that folder>")
CLASSES = ("plastic_water_bottles", "aluminum_soda_cans", "glass_beverage_bottles", "cardboard_boxes")
RAND_AUGMENT = "rand-m9-mstd0.5-inc1-mmax9"

CASES: dict[str, dict[str, Any]] = {
    "jpeg256": {"model": "resnet18", "size": 128, "image": (256, 256), "images": 840, "batch": 32},
    "photos": {"model": "test_resnet", "size": 224, "image": (4032, 3024), "images": 96, "batch": 16},
}


def make_folder(root: Path, image: tuple[int, int], count: int, seed: int = 0) -> None:
    """`count` JPEGs over CLASSES, 90% under train/ and 10% under val/: a shape per class on a textured ground."""
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


def timm_command(train_py: Path, data: Path, out: Path, case: dict[str, Any], epochs: int, workers: int) -> list[str]:
    return [sys.executable, str(train_py), "--data-dir", str(data), "--train-split", "train", "--val-split", "val",
            "--model", case["model"], "--num-classes", str(len(CLASSES)), "--img-size", str(case["size"]),
            "--input-size", "3", str(case["size"]), str(case["size"]), "-b", str(case["batch"]),
            "-j", str(workers), "--epochs", str(epochs), "--aa", RAND_AUGMENT, "--scale", "0.08", "1.0",
            "--hflip", "0.5", "--reprob", "0", "--opt", "adamw", "--lr", "1e-3", "--warmup-epochs", "0",
            "--device", "cpu", "--no-prefetcher", "--log-interval", "1000", "--output", str(out),
            "--checkpoint-hist", "1"]


def sustain_command(data: Path, out: Path, case: dict[str, Any], epochs: int, workers: str) -> list[str]:
    config = out / "bench.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "seed": 0, "output_dir": str(out / "run"), "device": "cpu",
        "data": {"root": str(data), "cache_dir": str(out / "cache"),
                 "sources": [{"name": "bench", "root": ".", "label_map": "identity"}],
                 "split": {"train": 0.9, "val": 0.1, "test": 0.0}, "augment": "strong",
                 "augment_options": {"rand_augment": RAND_AUGMENT}, "num_workers": workers},
        "model": {"name": case["model"], "pretrained": False, "input_size": case["size"], "drop_path_rate": 0.0},
        "train": {"epochs": epochs, "batch_size": case["batch"], "lr": 1e-3, "early_stopping_patience": 0,
                  "layer_decay": None},
    }))
    return [sys.executable, "-m", "sustain", "train", "--config", str(config)]


def timed(cmd: list[str], log: Path) -> tuple[float, int]:
    t = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    return time.perf_counter() - t, rc


def run_case(name: str, train_py: Path, epochs: int, workers: int, sustain_workers: str,
             images: int | None) -> dict[str, Any]:
    case = dict(CASES[name])
    if images:
        case["images"] = images
    with tempfile.TemporaryDirectory(prefix=f"bench_vs_timm_{name}_") as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "data"
        make_folder(data, case["image"], case["images"])
        row: dict[str, Any] = {"case": name, **case, "epochs": epochs, "timm_workers": workers,
                               "load_before": os.getloadavg()[0]}
        for tool, cmd in (("timm", timm_command(train_py, data, tmp_path / "timm", case, epochs, workers)),
                          ("sustain", sustain_command(data, _mkdir(tmp_path / "sustain"), case, epochs,
                                                      sustain_workers))):
            seconds, rc = timed(cmd, tmp_path / f"{tool}.log")
            row[f"{tool}_seconds"], row[f"{tool}_rc"] = round(seconds, 1), rc
            if rc != 0:
                print(f"  {tool} failed (exit {rc}); last lines of its log:\n" +
                      "\n".join((tmp_path / f"{tool}.log").read_text().splitlines()[-15:]), flush=True)
        plan = [line for line in (tmp_path / "sustain.log").read_text().splitlines() if "CPU plan" in line]
        row["sustain_cpu_plan"] = plan[0].split("CPU plan: ", 1)[-1] if plan else None
        row["load_after"] = os.getloadavg()[0]
        row["ratio"] = round(row["timm_seconds"] / row["sustain_seconds"], 2)
    return row


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_train_py(arg: str | None) -> Path | None:
    if not arg:
        return None
    path = Path(arg).expanduser()
    path = path / "train.py" if path.is_dir() else path
    return path if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--timm", help="timm source tree (or its train.py)")
    parser.add_argument("--only", choices=sorted(CASES), action="append")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="timm's -j")
    parser.add_argument("--sustain-workers", default="auto", help="data.num_workers for Sustain (default: planned)")
    parser.add_argument("--images", type=int, default=None, help="override each case's image count")
    args = parser.parse_args(argv)
    train_py = find_train_py(args.timm or os.environ.get("TIMM_TRAIN_PY"))
    if train_py is None:
        print(f"bench_vs_timm skipped: {HOW_TO_GET}")
        return 0
    rows = []
    for name in args.only or list(CASES):
        print(f"[{name}] running timm, then sustain ...", flush=True)
        rows.append(run_case(name, train_py, args.epochs, args.workers, args.sustain_workers, args.images))
    print(f"\n{'case':<8} {'images':>6} {'epochs':>6} {'timm s':>8} {'sustain s':>10} {'ratio':>6}  load  sustain plan")
    for r in rows:
        print(f"{r['case']:<8} {r['images']:>6} {r['epochs']:>6} {r['timm_seconds']:>8.1f} {r['sustain_seconds']:>10.1f} "
              f"{r['ratio']:>6.2f}  {r['load_before']:.1f}  {r['sustain_cpu_plan']}")
    print("ratio = timm seconds / sustain seconds (> 1: Sustain finished first); goals: jpeg256 >= 1.2, photos >= 3")
    write_result(RESULTS, {"machine": platform.platform(), "cpus": os.cpu_count(), "rows": rows}, end="")
    return 1 if any(r["timm_rc"] or r["sustain_rc"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

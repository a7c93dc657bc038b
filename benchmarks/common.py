"""What every benchmark shares: the project root, where results go, the parser, writing a result.

A benchmark runs as a script (`python benchmarks/bench_x.py`) or as a module
(`python -m benchmarks.bench_x`); as a script it puts the project root on
sys.path itself before importing this module.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
CLASSES = ("plastic_water_bottles", "aluminum_soda_cans", "glass_beverage_bottles", "cardboard_boxes")


def results_file(name: str) -> Path:
    """The default JSON file of benchmark `name`: benchmarks/results/<name>.json."""
    return RESULTS_DIR / f"{name}.json"


def arg_parser(doc: str | None) -> argparse.ArgumentParser:
    """The benchmark's parser, described by the first paragraph of its module docstring."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])


def write_result(path: Path, result: Any, *, echo: bool = False, end: str = "\n") -> Path:
    """Write `result` as indented JSON to `path` (folders created); with `echo`, print it first."""
    text = json.dumps(result, indent=2)
    if echo:
        print(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + end, encoding="utf-8")
    return path


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

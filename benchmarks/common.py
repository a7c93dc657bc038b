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

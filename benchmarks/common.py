"""The benchmarks' one harness: provenance, result files, argument parsing and timing.

A benchmark runs as a script (`python benchmarks/bench_x.py`) or as a module
(`python -m benchmarks.bench_x`); as a script it puts the project root on
sys.path itself before importing this module. Benchmarks import the harness
(`benchmarks.HARNESS`: this module, `inputs` for the generated images, models
and lakes, `serving` for the HTTP load) and never each other.

Every result written with `write_result` carries a `provenance` block: the
command line, the commit, the date, the machine (CPU model, cores, ISA flags,
memory, load average when this module was imported and when the result was
written) and the versions of torch, timm, numpy and the other libraries a
figure depends on, so a figure in the docs can be traced to where and how it
was measured. It is the only place a result records machine facts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"

# The load before the benchmark: taken when the benchmark imports this module.
LOAD_BEFORE = os.getloadavg()
# The CPU features that decide which kernels torch and Pillow use.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd", "sve")
# The libraries whose version can move a figure (speed: torch, onnxruntime, pillow; accuracy: the rest too).
VERSIONED = ("torch", "timm", "numpy", "pillow", "onnxruntime", "scikit-learn", "cleanlab")


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
    """The installed version of each library in VERSIONED (None where it is not installed)."""
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {name: version(name) for name in VERSIONED}


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

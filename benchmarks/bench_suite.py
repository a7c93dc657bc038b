"""The test suite's wall clock: what `make test` runs (ruff, then pytest), timed, with the slowest files.

    python -m benchmarks.bench_suite [--pytest-args ARGS] [--baseline PATH]
        [--baseline-pytest-args ARGS] [--json PATH] [--top 12]

Runs `ruff check` and `python -m pytest --durations=0 ARGS` in this checkout,
as `make test` does (ARGS: the Makefile's PYTEST_PARALLEL; the other options
from pyproject.toml), and records the wall
seconds of each, the counts of passed, skipped and failed tests, the sum of
the per-test durations and the files that take longest. With `--baseline
PATH`, another checkout of the project (e.g. a worktree of main) runs first
under the same conditions, so the two figures sit side by side in one result.
The load average before and after is in the result's provenance: a figure
taken while other work runs on the machine is slower than a quiet one.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

if not __package__:  # run as a script: the project root on sys.path, for `benchmarks` and `sustain`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, arg_parser, results_file, write_result  # noqa: E402

RESULTS = results_file("bench_suite")
DURATION = re.compile(r"^([\d.]+)s (call|setup|teardown)\s+(\S+?)::", re.M)
COUNTS = re.compile(r"(\d+) (passed|skipped|failed|errors?)\b")


def timed_run(cmd: list[str], repo: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall seconds and result of `cmd` in `repo`, importing that checkout's `sustain`."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done


def summarize(output: str, top: int) -> dict:
    """Counts, the sum of the per-test durations and the slowest files, from pytest's `--durations=0` output."""
    per_file: Counter[str] = Counter()
    for seconds, _, path in DURATION.findall(output):
        per_file[path] += float(seconds)
    summary_line = output.strip().splitlines()[-1] if output.strip() else ""
    counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n)
              for n, kind in COUNTS.findall(summary_line)}
    return {"passed": counts.get("passed", 0), "skipped": counts.get("skipped", 0),
            "failed": counts.get("failed", 0) + counts.get("error", 0),
            "sum_of_durations_s": round(sum(per_file.values()), 1),
            "slowest_files": [{"file": f, "seconds": round(s, 1)} for f, s in per_file.most_common(top)]}


def measure(repo: Path, pytest_args: str, top: int) -> dict:
    """One `make test` of checkout `repo`: ruff, then the whole pytest suite with `pytest_args`."""
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    ruff_s, ruff = timed_run([sys.executable, "-m", "ruff", "check", "--quiet", "sustain", "tests", "benchmarks"],
                             repo)
    pytest_s, tests = timed_run([sys.executable, "-m", "pytest", "-q", "--durations=0", "-p", "no:cacheprovider",
                                 *shlex.split(pytest_args)], repo)
    if tests.returncode not in (0, 1):
        raise SystemExit(f"pytest in {repo} exited {tests.returncode}:\n{tests.stdout[-3000:]}{tests.stderr[-3000:]}")
    addopts = re.search(r'^addopts = "(.*)"$', (repo / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    return {"repo": str(repo), "commit": commit.stdout.strip() or None, "pytest_args": pytest_args,
            "pytest_addopts": addopts and addopts[1],
            "ruff_ok": ruff.returncode == 0, "ruff_s": round(ruff_s, 1), "pytest_s": round(pytest_s, 1),
            "make_test_s": round(ruff_s + pytest_s, 1), **summarize(tests.stdout, top)}


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--pytest-args", default="-n 2 --dist loadfile --no-loadscope-reorder", help="what `make test` adds to pytest")
    parser.add_argument("--baseline", type=Path, help="another checkout whose suite runs first, for comparison")
    parser.add_argument("--baseline-pytest-args", default="", help="what the baseline's `make test` adds to pytest")
    parser.add_argument("--top", type=int, default=12, help="how many of the slowest files to record")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs = []
    cases = (("baseline", args.baseline, args.baseline_pytest_args), ("this checkout", ROOT, args.pytest_args))
    for name, repo, pytest_args in cases:
        if repo is not None:
            print(f"running the suite of {repo} (pytest {pytest_args}) ...", flush=True)
            runs.append({"case": name, **measure(repo.resolve(), pytest_args, args.top)})
            print(f"  {runs[-1]['make_test_s']} s, {runs[-1]['passed']} passed, {runs[-1]['failed']} failed",
                  flush=True)
    write_result(args.json, {"runs": runs})
    print(f"wrote {args.json}")
    return 1 if any(r["failed"] or not r["ruff_ok"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())

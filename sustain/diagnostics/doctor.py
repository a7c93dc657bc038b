"""Running the checks and reporting them: `sustain doctor` and `training_diagnostics.py`.

The report exits 0 when nothing FAILs and 1 otherwise. `--json` writes the
report to stdout and the human-readable lines to stderr, so
`sustain doctor --json > report.json` works.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from ..config import Config, load_config
from ..device import Backends
from ..errors import UsageError
from .accelerator import check_accelerator
from .core import ICONS, Check, CheckResult, DiagnosticReport, DoctorContext, Status, log
from .data_checks import check_data, check_output_folder, check_workers
from .environment import check_pytorch, versions
from .model_checks import check_forward, check_model, check_transforms

CHECKS: tuple[Check, ...] = (check_pytorch, check_accelerator, check_model, check_transforms, check_forward,
                             check_data, check_output_folder, check_workers)


def default_config_path() -> Path:
    """configs/demo.yaml of this checkout (or of the working directory)."""
    for base in (Path(__file__).resolve().parents[2], Path.cwd()):
        candidate = base / "configs" / "demo.yaml"
        if candidate.is_file():
            return candidate
    raise UsageError("No --config given and configs/demo.yaml was not found",
                     "run from the project folder, or pass --config FILE")


def run_diagnostics(config: Config | str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                    include_data: bool | None = None, backends: Backends | None = None) -> DiagnosticReport:
    """Run every check, logging each result and then the DIAGNOSTIC SUMMARY.

    `config`: a Config, a YAML path, or None for configs/demo.yaml. The data
    check runs when a config is given, unless `include_data` says otherwise.
    `backends` replaces the detected hardware (tests simulate MPS with it).
    """
    if config is None:
        path = default_config_path()
        cfg, label = load_config(path, overrides), f"{path} (default)"
        include_data = bool(include_data)
    elif isinstance(config, Config):
        cfg, label = config, "<Config object>"
    else:
        cfg, label = load_config(config, overrides), str(config)
    if include_data is None:
        include_data = True
    ctx = DoctorContext(cfg, backends=backends)
    log.info("🩺 Sustain diagnostics (config: %s)", label)
    results = []
    for run in CHECKS:
        if run is check_data and not include_data:
            continue
        result = run(ctx)
        results.append(result)
        for line in format_result(result):
            log.info(line)
    report = DiagnosticReport(results, label, versions())
    for line in format_summary(report, data_checked=include_data):
        log.info(line)
    return report


def format_result(result: CheckResult) -> list[str]:
    lines = [f"{ICONS[result.status]} [{result.status.value}] {result.name}: {result.detail}"]
    if result.hint and result.status is not Status.PASS:
        lines.append(f"      → {result.hint}")
    return lines


def format_summary(report: DiagnosticReport, *, data_checked: bool = True) -> list[str]:
    rule = "=" * 60
    lines = ["", rule, "DIAGNOSTIC SUMMARY", rule]
    lines += [f"  {ICONS[r.status]} {r.status.value:<4}  {r.name}" for r in report.results]
    if not data_checked:
        lines.append("  (data not checked: pass --config FILE to check a run's data)")
    c = report.counts()
    lines.append(f"  {c['PASS']} passed, {c['WARN']} warning(s), {c['FAIL']} failed")
    for r in report.failures:
        lines.append(f"  ❌ {r.name}: {r.hint}")
    lines.append("  Environment ready: nothing failed." if report.ok else "  Not ready: fix the failures above.")
    lines.append(rule)
    return lines


@contextlib.contextmanager
def _human_output_to_stderr() -> Iterator[None]:
    """Keep stdout for the JSON report: log handlers and prints go to stderr meanwhile."""
    moved = []
    for logger in (logging.getLogger("sustain"), logging.getLogger()):
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                handler.setStream(sys.stderr)
                moved.append(handler)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler in moved:
            handler.setStream(sys.stdout)


def run_cli(config: str | Path | None = None, as_json: bool = False) -> int:
    """`sustain doctor` / `training_diagnostics.py`: 0 when nothing FAILs, else 1."""
    if as_json:
        with _human_output_to_stderr():
            report = run_diagnostics(config)
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
        sys.stdout.flush()
    else:
        report = run_diagnostics(config)
    return report.exit_code

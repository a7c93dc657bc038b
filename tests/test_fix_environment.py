"""fix_environment.sh (SPEC §9): repairs only what is broken, and reports the diagnostics' real result.

The script never touches a real site-packages here: it runs a stand-in Python
(SUSTAIN_PYTHON) that forwards to this interpreter, logs every call, and
answers `-m pip install` by recording it instead of installing. A "broken
NumPy" is a `numpy` package that fails to import, put first on PYTHONPATH
until the stand-in pip has been called.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "fix_environment.sh"
BANNER = "✅ ALL CHECKS PASSED - READY TO TRAIN!"

pytestmark = pytest.mark.slow


def unimportable(site: Path, package: str) -> Path:
    """A folder holding a `package` that raises ImportError, to put first on PYTHONPATH."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(f'raise ImportError("{package} failed to import (simulated)")\n')
    return site


def stand_in_python(tmp_path: Path, *, numpy_broken: bool = False, missing: str | None = None) -> tuple[Path, Path]:
    """A python that logs its arguments. With `numpy_broken`, NumPy fails to import until pip ran;
    with `missing`, that package cannot be imported at all."""
    calls = tmp_path / "python_calls.log"
    repaired = tmp_path / "pip_ran"
    breakage = ""
    if missing:
        site = unimportable(tmp_path / f"without_{missing}", missing)
        breakage += f'export PYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}"\n'
    if numpy_broken:
        site = unimportable(tmp_path / "broken_numpy", "numpy")
        breakage += f'if [ ! -e "{repaired}" ]; then export PYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}"; fi\n'
    python = tmp_path / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s\\n" "$*" >> "{calls}"\n'
        f'if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then touch "{repaired}"; exit 0; fi\n'
        f"{breakage}"
        f'exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return python, calls


def run_script(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SUSTAIN_PYTHON": str(python)}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def pip_calls(calls: Path) -> list[str]:
    return [line for line in calls.read_text().splitlines() if line.startswith("-m pip")]


def test_repairs_a_broken_numpy_once_then_leaves_a_healthy_environment_alone(tmp_path: Path) -> None:
    python, calls = stand_in_python(tmp_path, numpy_broken=True)

    first = run_script(python)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "NumPy needs repair" in first.stdout and "Repairing NumPy" in first.stdout
    assert pip_calls(calls) == ["-m pip install --quiet numpy<2.0"]
    assert "Packages: torch" in first.stdout and "Accelerator:" in first.stdout  # versions and accelerator
    assert "DIAGNOSTIC SUMMARY" in first.stdout
    assert first.stdout.rstrip().endswith(BANNER)

    again = run_script(python)  # idempotent: nothing left to repair, same verdict
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Nothing to repair" in again.stdout and BANNER in again.stdout
    assert len(pip_calls(calls)) == 1


def test_a_failing_check_exits_1_without_the_banner(tmp_path: Path) -> None:
    python, calls = stand_in_python(tmp_path)
    missing = tmp_path / "no_such_lake"
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config.update(output_dir=str(tmp_path / "out"))
    config["data"]["root"] = str(missing)
    config_file = tmp_path / "missing_data.yaml"
    config_file.write_text(yaml.safe_dump(config))

    proc = run_script(python, "--config", str(config_file))
    assert proc.returncode == 1
    assert BANNER not in proc.stdout + proc.stderr
    assert "Nothing to repair" in proc.stdout and not pip_calls(calls)
    failures = proc.stdout.split("The diagnostics failed", 1)[1]
    assert "Data: data root not found" in failures and str(missing) in failures
    assert "fix: " in failures


def test_a_python_without_the_requirements_is_sent_to_make_venv(tmp_path: Path) -> None:
    python, calls = stand_in_python(tmp_path, missing="pydantic")
    proc = run_script(python)
    assert proc.returncode == 1
    assert "does not have the project's requirements" in proc.stdout and "make venv" in proc.stdout
    assert BANNER not in proc.stdout and not pip_calls(calls)

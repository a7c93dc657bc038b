"""The command-line frame (SPEC §8): every command is there, usage errors exit 2 without a traceback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

TOP_COMMANDS = ["train", "data", "evaluate", "predict", "report", "doctor"]
DATA_COMMANDS = ["ingest", "demo", "download"]
# SPEC §8: each command with the options it documents.
OPTIONS = {
    ("train",): ["--config", "--set", "--resume", "--output"],
    ("data", "ingest"): ["--config"],
    ("data", "demo"): ["--out"],
    ("data", "download"): ["--config"],
    ("evaluate",): ["--checkpoint", "--split", "--data"],
    ("predict",): ["--checkpoint", "--topk", "--tta", "--json", "IMAGE_OR_DIR"],
    ("report",): ["run_dir"],
    ("doctor",): ["--config", "--json"],
}


def _sustain_commands() -> list[list[str]]:
    """How a user runs the CLI: `python -m sustain`, and the console script when it is installed."""
    commands = [[sys.executable, "-m", "sustain"]]
    script = shutil.which("sustain", path=str(Path(sys.executable).parent))
    if script:
        commands.append([script])
    return commands


def _listed(help_text: str) -> set[str]:
    """Sub-command names in an argparse help's command list."""
    return set(re.findall(r"^\s{4}(\w+)\s", help_text, flags=re.MULTILINE))


@pytest.mark.slow
@pytest.mark.parametrize("entry", _sustain_commands(), ids=lambda c: Path(c[-1]).name)
def test_help_of_the_real_entry_point_lists_every_command(entry):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*entry, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=120, check=False)

    top = run("--help")
    assert top.returncode == 0, top.stderr
    assert _listed(top.stdout) >= set(TOP_COMMANDS), top.stdout
    data = run("data", "--help")
    assert data.returncode == 0, data.stderr
    assert _listed(data.stdout) >= set(DATA_COMMANDS), data.stdout
    bad = run("frobnicate")
    assert bad.returncode == 2
    assert "frobnicate" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("command", list(OPTIONS), ids=" ".join)
def test_each_command_documents_its_spec_options(run_cli, command):
    result = run_cli(*command, "--help")
    assert result.code == 0
    for option in OPTIONS[command]:
        assert option in result.out, f"`sustain {' '.join(command)} --help` lacks {option}"


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["frobnicate"], "frobnicate"),
        (["data", "frobnicate"], "frobnicate"),
        (["train"], "--config"),  # a required option is missing
        (["predict", "--checkpoint", "x.pth"], "IMAGE_OR_DIR"),
        (["predict", "--checkpoint", "x.pth", "a.jpg", "--topk", "three"], "three"),
        (["evaluate", "--checkpoint", "x.pth", "--split", "holdout"], "holdout"),
    ],
    ids=["unknown-command", "unknown-data-command", "missing-config", "missing-inputs", "bad-int",
         "bad-choice"],
)
def test_bad_usage_exits_2_naming_the_problem(run_cli, argv, named):
    result = run_cli(*argv)
    assert result.code == 2
    assert named in result.err
    assert "Traceback" not in result.output


@pytest.mark.parametrize("argv", [[], ["data"]], ids=["no-command", "no-data-command"])
def test_missing_command_prints_help_and_exits_2(run_cli, argv):
    result = run_cli(*argv)
    assert result.code == 2
    assert "usage:" in result.output


def test_a_sustain_error_becomes_a_message_and_its_exit_code(run_cli, tmp_path):
    (tmp_path / "not_a_lake.txt").write_text("hello", encoding="utf-8")
    result = run_cli("data", "demo", "--out", tmp_path)
    assert result.code == 2
    assert str(tmp_path) in result.out and "❌" in result.out
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "{missing}"],
        ["evaluate", "--checkpoint", "{missing}/best_model.safetensors"],
        ["predict", "--checkpoint", "{missing}/best_model.safetensors", "{missing}/photo.jpg"],
        ["data", "download", "--config", "{missing}/config.yaml"],
    ],
    ids=["report", "evaluate", "predict", "download"],
)
def test_missing_inputs_exit_2_without_traceback(run_cli, tmp_path, argv):
    missing = tmp_path / "missing"
    result = run_cli(*(a.format(missing=missing) for a in argv))
    assert result.code == 2, result.output
    assert "Traceback" not in result.output
    assert str(missing) in result.output


def test_an_unexpected_error_is_one_line_exit_1_and_the_traceback_only_with_verbose(run_cli, tmp_path,
                                                                                      monkeypatch):
    # A bug stands in for any failure the code did not foresee: the CLI boundary must still hold.
    import sustain.report.writer

    def broken(run_dir):
        raise RuntimeError("plot backend exploded")

    monkeypatch.setattr(sustain.report.writer, "build_report", broken)
    result = run_cli("report", tmp_path)
    assert result.code == 1
    assert "Unexpected error in `sustain report`: RuntimeError: plot backend exploded" in result.output
    assert "-v" in result.output and "Traceback" not in result.output

    verbose = run_cli("-v", "report", tmp_path)
    assert verbose.code == 1 and "Traceback" in verbose.output

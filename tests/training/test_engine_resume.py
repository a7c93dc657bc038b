"""Exact resume after a real crash, and the resumes that must be refused (SPEC §7)."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
import torch
from engine_helpers import (
    TINY_CLASSES,
    deterministic_history,
    make_tiny_lake,
    one_thread,  # noqa: F401  (autouse fixture)
    read_json,
    run_sustain,
    tiny_config_dict,
    write_yaml,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lake(tmp_path_factory.mktemp("tiny_lake"))


@pytest.mark.parametrize("amp", ["off", "on"], ids=["fp32", "bf16-cpu"])
def test_killed_after_epoch_1_and_resumed_ends_like_an_uninterrupted_run(tiny_lake: Path, tmp_path: Path,
                                                                         amp: str) -> None:
    # In-process loading and drop-path: augmentation and stochastic depth draw from the global RNG streams,
    # which the resume must restore (the data order follows the epoch seed). With train.amp: on the CPU
    # trains in bf16 autocast: the resume must be as exact.
    common = {"train": {"epochs": 3, "amp": amp}, "model": {"drop_path_rate": 0.1}}
    full_cfg = write_yaml(tmp_path / "full.yaml", tiny_config_dict(tiny_lake, tmp_path / "full", **common))
    crash_raw = tiny_config_dict(tiny_lake, tmp_path / "crash", **common)
    crash_cfg = write_yaml(tmp_path / "crash.yaml", {**crash_raw, "guards": {"debug_kill_after_epoch": 1}})

    full = run_sustain(["train", "--config", str(full_cfg)])
    assert full.returncode == 0, full.stdout + full.stderr
    assert ("Precision: bf16 autocast (train.amp: on)" if amp == "on" else "Precision: fp32") in full.stdout

    crashed = run_sustain(["train", "--config", str(crash_cfg)])
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    out = tmp_path / "crash"
    assert read_json(out / "metrics_history.json")["epoch"] == [1]
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 1
    assert "Training completed" not in crashed.stdout

    resumed = run_sustain(["train", "--config", str(write_yaml(tmp_path / "resume.yaml", crash_raw)),
                           "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resumed from" in resumed.stdout and "after epoch 1" in resumed.stdout
    assert "Epoch 1/3" not in resumed.stdout and "Epoch 2/3: Train Acc" in resumed.stdout

    expected = deterministic_history(read_json(tmp_path / "full" / "metrics_history.json"))
    got = deterministic_history(read_json(out / "metrics_history.json"))
    assert got == expected
    assert got["epoch"] == [1, 2, 3]
    full_last = torch.load(tmp_path / "full" / "last.pth", weights_only=True)
    resumed_last = torch.load(out / "last.pth", weights_only=True)
    for name, tensor in full_last["model"].items():
        assert torch.equal(tensor, resumed_last["model"][name]), name


def test_resume_against_a_changed_class_list_is_refused(tiny_lake: Path, tmp_path: Path, run_cli) -> None:
    raw = tiny_config_dict(tiny_lake, tmp_path / "run", train={"epochs": 1})
    assert run_cli("train", "--config", write_yaml(tmp_path / "a.yaml", raw)).code == 0

    fewer = tiny_config_dict(tiny_lake, tmp_path / "run", classes=TINY_CLASSES[:-1], train={"epochs": 2})
    result = run_cli("train", "--config", write_yaml(tmp_path / "b.yaml", fewer), "--resume", "auto")
    assert result.code == 2
    assert f"Cannot resume from {tmp_path / 'run' / 'last.pth'}: the class list changed (removed ['magenta'])" \
        in result.output
    assert "start a new run in another output folder" in result.output
    assert "Epoch 2/2" not in result.output


def test_resume_against_changed_data_is_refused(tiny_lake: Path, tmp_path: Path, run_cli) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(tiny_lake / "tiny", lake / "tiny")
    raw = tiny_config_dict(lake, tmp_path / "run", train={"epochs": 1})
    config = write_yaml(tmp_path / "a.yaml", raw)
    assert run_cli("train", "--config", config).code == 0
    make_tiny_lake(lake, per_class=11, seed=1)  # one more image per class: another manifest
    result = run_cli("train", "--config", config, "--set", "train.epochs=2", "--resume", "auto")
    assert result.code == 2
    assert "the data manifest changed" in result.output


class _Payload:
    marker: Path

    def __reduce__(self):
        return (open, (str(_Payload.marker), "w"))


def test_resume_from_a_checkpoint_with_a_pickled_callable_is_refused_unexecuted(tiny_lake: Path, tmp_path: Path,
                                                                                run_cli) -> None:
    _Payload.marker = tmp_path / "payload_ran"
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"kind": "last", "classes": TINY_CLASSES, "hook": _Payload()}, out / "last.pth")
    raw = tiny_config_dict(tiny_lake, out, train={"epochs": 1})
    result = run_cli("train", "--config", write_yaml(tmp_path / "a.yaml", raw), "--resume", "auto")
    assert result.code == 2
    assert f"Refusing to load checkpoint {out / 'last.pth'}" in result.output
    assert not _Payload.marker.exists()
    assert "Epoch 1/1" not in result.output

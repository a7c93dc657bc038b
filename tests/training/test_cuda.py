"""The CUDA path on a real GPU (issue 17): bf16 autocast, fp16 with a GradScaler, channels_last, the guards.

Marked `cuda` and skipped where no CUDA GPU is present (CI, laptops); the
device plans themselves are tested everywhere with simulated hardware in
test_device.py. `benchmarks/gpu_check.sh` runs these on a GPU
(`pytest -m cuda tests/training/test_cuda.py`). Each test is a real, short training
run on the tiny lake, read back from the files a user would read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from engine_helpers import make_tiny_lake, read_json, tiny_config_dict

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# Each epoch of the tiny lake has 6 steps; one injected step is 17%: a "warning", not a critical stop.
ONE_BAD_STEP_PER_EPOCH = {"warn_pct": 10.0, "critical_pct": 40.0}


@pytest.fixture(scope="module")
def tiny_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lake(tmp_path_factory.mktemp("tiny_lake"))


def train_on_cuda(lake: Path, out: Path, **sections):
    from sustain.config import config_from_dict
    from sustain.training.engine import train

    raw = tiny_config_dict(lake, out, **sections)
    raw["device"] = "cuda"
    return train(config_from_dict(raw)), read_json(out / "run.json")


def all_finite(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in state_dict.values() if t.is_floating_point())


def test_bf16_autocast_trains_on_cuda_and_saves_weights_a_cpu_can_load(tiny_lake: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    torch.cuda.reset_peak_memory_stats()
    result, run = train_on_cuda(tiny_lake, tmp_path / "run")
    assert result.ok, result.stop_reason
    assert run["device"]["type"] == "cuda" and run["device"]["precision"] == "bf16 autocast"
    assert run["device"]["amp_on_at_end"] is True
    assert torch.cuda.max_memory_allocated() > 0  # the steps really ran on the GPU
    assert run["health"]["totals"]["skipped"] == 0
    losses = result.history["train_loss"]
    assert all(v is not None for v in losses) and losses[-1] < losses[0]
    weights = load_file(tmp_path / "run" / "best_model.safetensors")  # on the CPU, as a deployment reads it
    assert {t.device.type for t in weights.values()} == {"cpu"} and all_finite(weights)


def test_fp16_gradscaler_skips_injected_nonfinite_steps_and_backs_off_its_scale(tiny_lake: Path, tmp_path: Path,
                                                                               monkeypatch) -> None:
    from sustain.training import engine

    real = engine.detect_backends()  # this GPU, as a pre-Ampere one without bf16: fp16 and a GradScaler
    monkeypatch.setattr(engine, "detect_backends", lambda: dataclasses.replace(real, cuda_bf16=False))
    result, run = train_on_cuda(tiny_lake, tmp_path / "run", guards={
        **ONE_BAD_STEP_PER_EPOCH, "inject_nonfinite_loss": [1], "inject_nonfinite_grad": [8]})
    assert result.ok, result.stop_reason
    assert run["device"]["precision"] == "fp16 autocast + GradScaler"
    totals = run["health"]["totals"]
    assert totals["nonfinite_loss"] == 1  # caught before backward
    assert totals["nonfinite_grad"] >= 1  # the injected one (fp16 may overflow on its own too)
    last = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert last["scaler"]["scale"] < 65536.0  # the scaler saw the inf and backed off (its default start is 2**16)
    assert all_finite(last["model"])  # no NaN reached the weights
    assert all(v is not None for v in result.history["val_loss"])


def test_channels_last_is_planned_for_a_cnn_on_cuda_and_trains(tiny_lake: Path, tmp_path: Path) -> None:
    result, run = train_on_cuda(tiny_lake, tmp_path / "run", model={"name": "test_resnet", "input_size": 32})
    assert result.ok, result.stop_reason
    assert run["device"]["channels_last"] is True
    assert run["health"]["totals"]["skipped"] == 0
    assert all_finite(torch.load(tmp_path / "run" / "last.pth", weights_only=True)["model"])


def test_nonfinite_losses_in_a_row_turn_amp_off_on_cuda_and_training_goes_on_in_fp32(tiny_lake: Path,
                                                                                    tmp_path: Path) -> None:
    result, run = train_on_cuda(tiny_lake, tmp_path / "run", guards={
        "warn_pct": 10.0, "critical_pct": 50.0, "escalate_after": 2, "inject_nonfinite_loss": [1, 2]})
    assert result.ok, result.stop_reason
    escalations = run["health"]["escalations"]
    assert [(e["action"], e["step"]) for e in escalations] == [("amp_off", 2)]
    assert run["device"]["amp_on_at_end"] is False
    last = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert last["guard"]["amp_on"] is False and all_finite(last["model"])
    assert run["health"]["totals"]["nonfinite_loss"] == 2
    assert all(v is not None for v in result.history["val_loss"])

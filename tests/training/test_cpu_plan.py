"""The CPU plan's measurement (training/cpu_plan.py): how a step is timed, and what reaches the pure plan.

A tiny model that sleeps a set time per forward pass makes the timing exact enough to check which
passes count, and records what each pass saw (autocast, memory format).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sustain.device import plan_cpu, plan_precision
from sustain.training.cpu_plan import plan_cpu_measured, time_step
from sustain.training.losses import PartialLabelLoss

CPU = torch.device("cpu")
FP32 = plan_precision("cpu", "off", False)
BF16 = plan_precision("cpu", "on", False)


class Sleeper(nn.Module):
    """Sleeps `sleeps[i]` seconds in its i-th forward pass and records what that pass saw."""

    def __init__(self, sleeps: tuple[float, ...]) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 3)
        self.sleeps = sleeps
        self.seen: list[dict] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append({"autocast": torch.is_autocast_enabled("cpu"),
                          "dtype": torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None,
                          "channels_last": x.is_contiguous(memory_format=torch.channels_last)
                          and not x.is_contiguous()})
        time.sleep(self.sleeps[len(self.seen) - 1])  # IndexError: more passes than planned
        return self.fc(x.flatten(1))


def batch() -> SimpleNamespace:
    return SimpleNamespace(images=torch.randn(2, 3, 4, 4), targets=torch.eye(3)[[0, 1]])


def test_a_step_is_timed_after_one_warm_up_as_the_faster_of_two_passes() -> None:
    """The warm-up (building autograd's buffers) never counts; of the next two the faster does, so a burst
    of other processes' load in one of them does not look like compute."""
    model = Sleeper((0.0, 0.05, 0.25))
    seconds = time_step(model, batch(), PartialLabelLoss(), CPU, FP32, channels_last=False)
    assert len(model.seen) == 3
    assert 0.05 <= seconds < 0.2
    model = Sleeper((0.0, 0.25, 0.05))
    assert 0.05 <= time_step(model, batch(), PartialLabelLoss(), CPU, FP32, channels_last=False) < 0.2
    assert all(p.grad is None for p in model.parameters())  # nothing left for the first real step


def test_a_step_is_timed_in_the_run_s_precision_and_memory_format() -> None:
    model = Sleeper((0.0, 0.0, 0.0))
    time_step(model, batch(), PartialLabelLoss(), CPU, BF16, channels_last=True)
    assert [s["dtype"] for s in model.seen] == [torch.bfloat16] * 3
    assert all(s["channels_last"] for s in model.seen)
    model = Sleeper((0.0, 0.0, 0.0))
    time_step(model, batch(), PartialLabelLoss(), CPU, FP32, channels_last=False)
    assert not any(s["autocast"] or s["channels_last"] for s in model.seen)


@pytest.fixture
def threads() -> Iterator[int]:
    """torch's thread count before the test, put back after it: the plan applies its own."""
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


@pytest.mark.parametrize(("setting", "world"), [("auto", 1), ("0", 1), ("auto", 2)])
def test_the_measured_plan_is_the_pure_plan_of_the_user_s_setting_and_the_world(
        setting: str, world: int, threads: int, caplog: pytest.LogCaptureFixture) -> None:
    """What the measurement hands the pure plan (`device.plan_cpu`): the user's workers (a number is kept,
    `auto` is planned: with a load slower than the step it plans a worker, where the user's 0 stays 0), the
    world size, the threads torch has; its line is logged; the threads applied."""
    from sustain.utils import cpu_count

    model = Sleeper(())  # step_seconds is given (the probe timed it): no pass may run
    with caplog.at_level(logging.INFO, logger="sustain.training.engine"):
        plan = plan_cpu_measured(setting, model, batch(), PartialLabelLoss(), CPU, FP32, 0.03, False, world,
                                 step_seconds=0.02)
    applied = torch.get_num_threads()
    assert plan == plan_cpu(cores=cpu_count(), step_seconds=0.02, step_threads=threads, load_seconds=0.03,
                            max_threads=threads, workers=None if setting == "auto" else int(setting),
                            world_size=world)
    assert model.seen == [] and applied == plan.threads
    assert plan.line in caplog.text
    if setting == "0":
        assert plan.workers == 0


def test_the_plan_times_the_step_in_the_run_s_memory_format_when_no_probe_did(threads: int) -> None:
    model = Sleeper((0.0, 0.0, 0.0))
    plan_cpu_measured("auto", model, batch(), PartialLabelLoss(), CPU, FP32, 0.001, True, 1)
    assert len(model.seen) == 3 and all(s["channels_last"] for s in model.seen)

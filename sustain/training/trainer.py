"""`Trainer`: what the training loop reads, built once by `engine` at setup."""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..device import DevicePlan, PrecisionPlan
from ..taxonomy import Taxonomy
from .distributed import Distributed
from .guards import Guards
from .hooks import Hooks
from .interrupts import StopRequests
from .loaders import Loaders
from .precision import autocast_context


class CheckpointClock:
    """When the last `last.pth` was written; a mid-epoch one is due every `minutes` (0: never)."""

    def __init__(self, minutes: float) -> None:
        self.interval, self.last = 60.0 * minutes, time.monotonic()

    def due(self) -> bool:
        return self.interval > 0 and time.monotonic() - self.last >= self.interval

    def reset(self) -> None:
        self.last = time.monotonic()


@dataclass
class Trainer:
    """What setup builds and the loop reads. Setup fills it once; then the loop changes only these
    objects' own state (weights, optimizer, guards, the clock) and the `LoopState` it is given.
    `fwd_model` is set once more, to the compiled and/or DDP-wrapped model, after a resume."""

    cfg: Config
    taxonomy: Taxonomy
    sources: list[str]
    dist: Distributed
    device: torch.device
    plan: DevicePlan
    precision: PrecisionPlan
    channels_last: bool
    out_dir: Path
    meta: dict[str, Any]
    model: nn.Module
    fwd_model: nn.Module  # the model, compiled and/or wrapped for DDP
    ema: Any
    loss_fn: nn.Module
    val_loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    guards: Guards
    loaders: Loaders
    hooks: Hooks = field(default_factory=Hooks)
    stop: StopRequests = field(default_factory=StopRequests)  # `engine` installs its handlers around the loop
    clock: CheckpointClock = field(default_factory=lambda: CheckpointClock(0))

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.plan.type, self.precision, enabled=self.guards.state.amp_on)

    def autocast_factory(self):
        """`autocast` as a factory (what `evaluate.collect_predictions` takes); None when AMP is off."""
        if not self.guards.state.amp_on:
            return None
        return functools.partial(autocast_context, self.plan.type, self.precision, enabled=True)



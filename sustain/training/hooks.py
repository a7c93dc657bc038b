"""Plain callbacks at the training loop's natural points; no framework.

The debug options (`guards.inject_*`, `guards.debug_kill_after_epoch`) and
tracking (per step, per epoch, on an interrupt) are hooks: a new per-step or
per-epoch feature adds one here instead of another branch in the loop.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..tracking import Tracker
from .loop_state import EpochProgress


@dataclass
class Hooks:
    """Each list runs in order at its point of the loop."""

    loss: list[Callable[[int, torch.Tensor], torch.Tensor]] = field(default_factory=list)  # (micro-step, loss)
    grads: list[Callable[[int, nn.Module], None]] = field(default_factory=list)  # before each guarded update
    step_end: list[Callable[[int, Any, EpochProgress, float], None]] = field(default_factory=list)
    epoch_end: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)  # the history entry
    checkpoint: list[Callable[[int], None]] = field(default_factory=list)  # after an epoch's checkpoints
    interrupt: list[Callable[[str], None]] = field(default_factory=list)  # a stop signal ended the run (why)

    @classmethod
    def for_run(cls, cfg: Config, tracker: Tracker, classes: list[str]) -> Hooks:
        hooks = cls()
        inject_loss, inject_grad = set(cfg.guards.inject_nonfinite_loss), set(cfg.guards.inject_nonfinite_grad)
        if inject_loss:  # debug: watch the loss guard work
            hooks.loss.append(lambda step, loss: loss * float("nan") if step in inject_loss else loss)
        if inject_grad:  # debug: watch the gradient guard work
            hooks.grads.append(lambda step, model: _poison_a_gradient(model) if step in inject_grad else None)
        kill_after = cfg.guards.debug_kill_after_epoch
        if kill_after is not None:  # debug: a real crash right after a checkpoint
            hooks.checkpoint.append(lambda epoch: _kill_self() if epoch == kill_after else None)
        hooks.step_end.append(lambda step, images, progress, t_start: tracker.log_step(
            step, images, progress.loss_sum, progress.seen, t_start))
        hooks.epoch_end.append(lambda entry: tracker.log_epoch(entry, classes))
        hooks.interrupt.append(tracker.interrupted)
        return hooks


def _poison_a_gradient(model: nn.Module) -> None:
    next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("nan"))


def _kill_self() -> None:
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))

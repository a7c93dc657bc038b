"""Plain callbacks at the training loop's natural points; no framework.

The loop emits one event per thing that happened (a step skipped, an epoch
ended, a position saved, the run stopping, ...) and its subscribers react:
the debug options (`guards.inject_*`, `guards.debug_kill_after_epoch`),
tracking and the console. A new per-step or per-epoch feature adds a hook here
instead of another branch in the loop. Tracking reaches the run by this route
only (`attach_tracker`): the start of the run, each step and epoch, an
interrupt, the end (its counts go into run.json) and its part of `last.pth`;
so does the console (`attach_console`): what the loop says happened.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config, TrainConfig
from ..taxonomy import Taxonomy
from ..tracking import Tracker
from . import console
from .loop_state import EpochEnd, Stopping
from .progress import EpochProgress


@dataclass
class Hooks:
    """Each list runs in order at its point of the loop."""

    loss: list[Callable[[int, torch.Tensor], torch.Tensor]] = field(default_factory=list)  # (micro-step, loss)
    grads: list[Callable[[int, nn.Module], None]] = field(default_factory=list)  # before each guarded update
    nonfinite: list[Callable[[str, int, int], None]] = field(default_factory=list)  # (kind, step, epoch): skipped
    step_end: list[Callable[[int, Any, EpochProgress, float], None]] = field(default_factory=list)
    position: list[Callable[[int, int, int, Path], None]] = field(default_factory=list)  # a mid-epoch last.pth
    epoch_end: list[Callable[[EpochEnd], None]] = field(default_factory=list)  # rank 0, after the history is written
    stopping: list[Callable[[Stopping], None]] = field(default_factory=list)  # the guards or early stopping end it
    checkpoint: list[Callable[[int], None]] = field(default_factory=list)  # after an epoch's checkpoints
    interrupt: list[Callable[[str], None]] = field(default_factory=list)  # a stop signal ended the run (why)
    run_start: list[Callable[[RunStart], None]] = field(default_factory=list)  # setup done, before the first step
    run_end: list[Callable[[Path, dict[str, Any]], dict[str, Any]]] = field(default_factory=list)  # -> run.json
    saved: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)  # more last.pth keys
    stopped: dict[str, Callable[[], Any]] = field(default_factory=dict)  # more run.json keys when a signal stops it

    @classmethod
    def for_run(cls, cfg: Config) -> Hooks:
        """The debug options' hooks; tracking attaches with `attach_tracker`."""
        hooks = cls()
        inject_loss, inject_grad = set(cfg.guards.inject_nonfinite_loss), set(cfg.guards.inject_nonfinite_grad)
        if inject_loss:  # debug: watch the loss guard work
            hooks.loss.append(lambda step, loss: loss * float("nan") if step in inject_loss else loss)
        if inject_grad:  # debug: watch the gradient guard work
            hooks.grads.append(lambda step, model: _poison_a_gradient(model) if step in inject_grad else None)
        kill_after = cfg.guards.debug_kill_after_epoch
        if kill_after is not None:  # debug: a real crash right after a checkpoint
            hooks.checkpoint.append(lambda epoch: _kill_self() if epoch == kill_after else None)
        return hooks

    def attach_tracker(self, tracker: Tracker, classes: list[str]) -> None:
        def start(facts: RunStart) -> None:  # a resume reopens the saved MLflow run and TensorBoard step
            tracker.start(facts.cfg, facts.data_config, facts.summary, facts.system, facts.saved.get("tracking"))

        def end(out_dir: Path, record: dict[str, Any]) -> dict[str, Any]:  # final metrics, artifacts, counts
            tracked = tracker.finish(out_dir, record)
            return {} if tracked is None else {"tracking": tracked}

        self.run_start.append(start)
        self.step_end.append(lambda step, images, progress, t_start: tracker.log_step(
            step, images, progress.loss_sum, progress.seen, t_start))
        self.epoch_end.append(lambda end: tracker.log_epoch(end.entry, classes))
        self.interrupt.append(tracker.interrupted)
        self.run_end.append(end)
        self.saved["tracking"] = tracker.state
        self.stopped["tracking"] = tracker.record  # an interrupted run.json names the run to resume into

    def attach_console(self, train: TrainConfig, taxonomy: Taxonomy) -> None:
        """What the loop says: a skipped step, a saved position, each epoch's summary, why the run stops."""
        self.nonfinite.append(console.nonfinite_step)
        self.position.append(console.position_saved)
        self.epoch_end.append(lambda end: console.epoch_summary(end, train.epochs, taxonomy))
        self.stopping.append(lambda stop: console.stopping(stop, train.monitor, train.early_stopping_patience))


@dataclass(frozen=True)
class RunStart:
    """What the `run_start` hooks learn: the config, the data, the device and, on a resume, what the
    `saved` hooks put into last.pth."""

    cfg: Config
    data_config: Mapping[str, Any]
    summary: Mapping[str, Any]
    system: Mapping[str, Any]
    saved: Mapping[str, Any]


def _poison_a_gradient(model: nn.Module) -> None:
    next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("nan"))


def _kill_self() -> None:
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))

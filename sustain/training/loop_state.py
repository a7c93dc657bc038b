"""What the training loop carries from step to step and epoch to epoch, and its one decision.

`LoopState` is everything `last.pth` holds about the loop (with the model,
optimizer, EMA and guard state beside it); `EpochProgress` is the running sums
of the epoch in progress (saved in a mid-epoch checkpoint); `decide` is the pure
choice after an epoch: go on, finish, stop early or stop for the guards.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..artifacts import History
from ..config import Config
from .guards import COUNTS


@dataclass
class BestScore:
    """The best epoch so far by the monitored score, and its checkpoint's file name."""

    score: float | None = None
    epoch: int | None = None
    val_acc: float | None = None
    macro_f1: float | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LoopState:
    """Everything the loop carries from epoch to epoch; `last.pth` holds all of it."""

    epoch: int = 0  # completed epochs
    updates: int = 0  # optimizer steps taken
    micro_steps: int = 0  # batches seen; the step index of the guard injections
    history: History = field(default_factory=History)
    best: BestScore = field(default_factory=BestScore)
    bad_epochs: int = 0
    early_stopped: bool = False
    stop_reason: str | None = None
    failed: bool = False
    health: list[dict[str, Any]] = field(default_factory=list)
    trend_warnings: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0  # batches of epoch `epoch + 1` already trained (a mid-epoch checkpoint)
    partial: list[dict[str, Any]] | None = None  # each rank's EpochProgress at that step
    events: list[dict[str, Any]] = field(default_factory=list)  # interruptions and resumes, for run.json
    segments: list[dict[str, Any]] = field(default_factory=list)  # earlier starts: {"started", "train_seconds"}
    segment_clock: float | None = None  # perf_counter when this start began training (not saved)
    segment_started: str | None = None

    def start_segment(self) -> None:
        """This start begins training: run.json counts its seconds beside the earlier starts'."""
        self.segment_clock, self.segment_started = time.perf_counter(), now()

    def end_segment(self) -> None:
        """Training of this start is over: its seconds stop counting (the final evaluation is not training)."""
        self.segments, self.segment_clock = self.all_segments(), None

    def all_segments(self) -> list[dict[str, Any]]:
        """Every start so far, this one with its seconds until now (a checkpoint keeps them)."""
        if self.segment_clock is None:
            return list(self.segments)
        current = {"started": self.segment_started, "train_seconds": round(time.perf_counter() - self.segment_clock, 3)}
        return [*self.segments, current]

    def train_seconds(self) -> float:
        return sum(float(s["train_seconds"]) for s in self.all_segments())

    def state_dict(self) -> dict[str, Any]:
        """The loop's part of last.pth (plain types); `load_state_dict` reads back exactly these keys."""
        return {"epoch": self.epoch, "updates": self.updates, "micro_steps": self.micro_steps,
                "early_stopping": {"best": self.best.to_dict(), "bad_epochs": self.bad_epochs, "stopped": self.early_stopped},
                "failed": self.failed, "stop_reason": self.stop_reason,
                "history": self.history.to_dict(), "health": list(self.health),
                "trend_warnings": list(self.trend_warnings), "step": self.step, "partial": self.partial,
                "events": list(self.events), "segments": self.all_segments()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue a saved run. A run its guards stopped trains on (`failed` is not restored); an
        early stop stays stopped. Format-1 files (no position in an epoch) resume at the epoch's end."""
        self.epoch, self.updates, self.micro_steps = saved["epoch"], saved["updates"], saved["micro_steps"]
        es = saved["early_stopping"]
        self.best, self.bad_epochs, self.early_stopped = BestScore(**es["best"]), es["bad_epochs"], es["stopped"]
        self.stop_reason = saved["stop_reason"] if self.early_stopped else None
        self.history = History.from_dict(saved["history"], source="last.pth")
        self.health, self.trend_warnings = list(saved["health"]), list(saved["trend_warnings"])
        self.step, self.partial = saved.get("step", 0), saved.get("partial")
        self.events = list(saved.get("events", []))
        self.segments = list(saved.get("segments", []))  # a crash loses the time after its last checkpoint

    def note_event(self, event: str, epoch: int, step: int, of: int, reason: str | None) -> None:
        """An interruption or a resume, for run.json: when, where (epoch, step of `of`) and why."""
        self.events.append({"event": event, "time": now(), "epoch": epoch, "step": step, "of": of, "reason": reason})


POSTFIX_EVERY = 25  # the bar's loss/acc are read back from the device every this many steps


class EpochProgress:
    """The running sums of the epoch in progress. Loss and hits stay on the device until read."""

    def __init__(self, device: torch.device, saved: dict[str, Any] | None = None) -> None:
        saved = saved or {}
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.loss_sum = torch.tensor(saved.get("loss_sum", 0.0), dtype=dtype, device=device)
        self.correct = torch.tensor(saved.get("correct", 0), dtype=torch.int64, device=device)
        self.seen: int = saved.get("seen", 0)
        self.counts: dict[str, int] = dict.fromkeys(COUNTS, 0) | saved.get("counts", {})

    @classmethod
    def resume(cls, device: torch.device, partial: list[dict[str, Any]] | None, rank: int) -> EpochProgress:
        return cls(device, partial[rank] if partial and rank < len(partial) else None)

    def add(self, loss: torch.Tensor, hits: torch.Tensor) -> None:
        self.loss_sum += loss.to(self.loss_sum.dtype) * len(hits)
        self.correct += hits.sum()
        self.seen += len(hits)

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{float(self.loss_sum) / self.seen:.4f}", "acc": f"{100.0 * int(self.correct) / self.seen:.2f}%"}

    def state_dict(self) -> dict[str, Any]:
        return {"loss_sum": float(self.loss_sum), "correct": int(self.correct), "seen": self.seen,
                "counts": dict(self.counts)}


@dataclass
class StepOutcome:
    index: int  # the global micro-step
    trained: int = 0  # 1 when the loss went through backward
    guard_stop: bool = False
    signum: int = 0  # a stop signal, agreed over the ranks
    save_due: bool = False  # a mid-epoch checkpoint is due (rank 0's clock decides)


def update_groups(start: int, total: int, accum_steps: int) -> list[tuple[int, int]]:
    """The batch ranges [lo, hi) of the epoch's optimizer updates from batch `start` on: each ends at a
    multiple of `accum_steps` or at the epoch's end (a run resumed inside a group finishes it first)."""
    if start >= total:
        return []
    first = min(total, (start // accum_steps + 1) * accum_steps)
    edges = [start, *range(first, total, accum_steps), total]
    return list(itertools.pairwise(edges))


def is_improvement(score: float | None, best: float | None, monitor: str) -> bool:
    if score is None or not math.isfinite(score):
        return False
    if best is None:
        return True
    return score < best if monitor == "val_loss" else score > best


CONTINUE, DONE, EARLY_STOP, FAILED, CRITICAL = "continue", "done", "early_stop", "failed", "critical"


def decide(state: LoopState, cfg: Config) -> str:
    """What the loop does after an epoch (pure; `loop.apply_decision` carries it out): stop for the
    guards (an escalation ran out of rungs, or the epoch was critical), finish, stop early, or go on."""
    if state.failed:
        return FAILED
    if state.health and state.health[-1]["verdict"] == "critical":
        return CRITICAL
    if state.epoch >= cfg.train.epochs:
        return DONE
    patience = cfg.train.early_stopping_patience
    if patience and state.bad_epochs >= patience:
        return EARLY_STOP
    return CONTINUE


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

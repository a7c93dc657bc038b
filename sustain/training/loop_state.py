"""What the training loop carries from step to step and epoch to epoch, and what it decides.

`LoopState` is everything `last.pth` holds about the loop (with the model,
optimizer, EMA and guard state beside it; the epoch in progress is
`training.progress`'s). The decisions are computed here, on the state alone,
and handed to the loop as values: `close_epoch` records an epoch (health and
its verdict, best score, history, trend warnings), asks `decide` what comes
next (go on, finish, stop early or stop for the guards) and returns the
`EpochEnd` the loop's hooks receive.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

from ..artifacts import History
from ..config import Config
from ..evaluate import trends
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

    def note_position(self, epoch: int, step: int, of: int, partial: list[dict[str, Any]],
                      reason: str | None) -> None:
        """A mid-epoch last.pth comes next: `step` batches of `epoch` are trained, `partial` holds every rank's
        sums; a `reason` (a signal, the guards) is an interruption for run.json."""
        self.step, self.partial = step, partial
        if reason is not None:
            self.note_event("interrupted", epoch, step, of, reason)


@dataclass(frozen=True)
class EpochEnd:
    """What the `epoch_end` hooks learn: the history entry, the train and validation figures behind it,
    and the trend warnings this epoch raised."""

    epoch: int
    entry: dict[str, Any]
    train: dict[str, Any]
    val: dict[str, Any]
    verdict: str
    skipped_pct: float
    warnings: list[dict[str, Any]]
    improved: bool  # the monitored score improved: the best weights are saved
    decision: str  # `decide`'s
    stopping: Stopping | None  # why the run stops after this epoch (None: it goes on, or is done)


@dataclass(frozen=True)
class Stopping:
    """Why the run stops: `decision` is `decide`'s (failed, critical, early_stop); `step` > 0
    when the guards stopped it inside epoch `epoch` (the position saved); `train` holds the epoch's counts."""

    decision: str
    reason: str | None
    epoch: int
    step: int = 0
    train: dict[str, Any] = field(default_factory=dict)
    best_score: float | None = None
    best_epoch: int | None = None



def is_improvement(score: float | None, best: float | None, monitor: str) -> bool:
    if score is None or not math.isfinite(score):
        return False
    if best is None:
        return True
    return score < best if monitor == "val_loss" else score > best


CONTINUE, DONE, EARLY_STOP, FAILED, CRITICAL = "continue", "done", "early_stop", "failed", "critical"


def decide(state: LoopState, cfg: Config, verdict: str) -> str:
    """What the loop does after an epoch whose health is `verdict` (pure; `close_epoch` records it): stop for
    the guards (an escalation ran out of rungs, or the epoch was critical), finish, stop early, or go on."""
    if state.failed:
        return FAILED
    if verdict == "critical":
        return CRITICAL
    if state.epoch >= cfg.train.epochs:
        return DONE
    patience = cfg.train.early_stopping_patience
    if patience and state.bad_epochs >= patience:
        return EARLY_STOP
    return CONTINUE


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def close_epoch(state: LoopState, cfg: Config, epoch: int, tr: dict[str, Any], val: dict[str, Any], lr: float,
                seconds: float) -> EpochEnd:
    """Record epoch `epoch` in the state and decide what comes next: its health verdict, the best score,
    `decide` and the stop it records (before the epoch's checkpoints, so last.pth holds it), its health and
    history entries, and the trend warnings it raised."""
    state.epoch = epoch
    skipped_pct = 100.0 * tr["skipped"] / max(1, tr["steps"])
    verdict = health_verdict(skipped_pct, cfg.guards.warn_pct, cfg.guards.critical_pct)
    improved = _update_best(state, cfg.train.monitor, epoch, val)
    decision = decide(state, cfg, verdict)
    stopping = _record_stop(state, cfg, decision, epoch, round(skipped_pct, 3), tr)
    state.health.append({"epoch": epoch, "verdict": verdict, "skipped_pct": round(skipped_pct, 3),
                         **{k: tr[k] for k in COUNTS},
                         "val_data_errors": int(val["failed"])})
    entry = {
        "epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": val["loss"],
        "val_acc": val["acc"], "val_macro_f1": val["macro_f1"], "val_set_acc": val.get("set_acc"),
        "val_samples": val["samples"], "lr": lr, "skipped": skipped_pct / 100.0,
        "health": verdict, "epoch_seconds": seconds, "images_per_second": tr["images_per_second"],
        "per_class_f1": [float(f) for f in val["per_class_f1"]],
    }
    state.history.append(entry)
    printed = {w["id"] for w in state.trend_warnings}
    warnings = [w for w in trends.trend_warnings(state.history.to_dict()) if w["id"] not in printed]
    state.trend_warnings.extend(warnings)
    return EpochEnd(epoch, entry, tr, val, verdict, skipped_pct, warnings, improved, decision, stopping)


def health_verdict(skipped_pct: float, warn_pct: float, critical_pct: float) -> str:
    """An epoch's health from its share of skipped steps: healthy below warn_pct, warning from warn_pct to
    critical_pct, critical above (`decide` stops the run on a critical epoch)."""
    if skipped_pct > critical_pct:
        return "critical"
    if skipped_pct >= warn_pct:
        return "warning"
    return "healthy"


def _update_best(state: LoopState, monitor: str, epoch: int, val: dict[str, Any]) -> bool:
    """Did the monitored score improve? Keeps the best score and counts the epochs without gain."""
    score = {"val_macro_f1": val["macro_f1"], "val_acc": val["acc"], "val_loss": val["loss"]}[monitor]
    improved = is_improvement(score, state.best.score, monitor)
    if improved:
        state.best = BestScore(score=score, epoch=epoch, val_acc=val["acc"], macro_f1=val["macro_f1"],
                               path=state.best.path)
        state.bad_epochs = 0
    else:
        state.bad_epochs += 1
    return improved


def _record_stop(state: LoopState, cfg: Config, decision: str, epoch: int, skipped_pct: float,
                 tr: dict[str, Any]) -> Stopping | None:
    """Record `decision`'s stop in the state (last.pth, run.json) and say why; None when the run goes on or is done."""
    if decision == CRITICAL:
        state.failed = True
        state.stop_reason = (f"{skipped_pct:.1f}% of the steps of epoch {epoch} were skipped "
                             f"(critical above {cfg.guards.critical_pct:g}%)")
    elif decision == EARLY_STOP:
        state.early_stopped = True
        state.stop_reason = (f"early stopping: no gain in {cfg.train.monitor} for "
                             f"{cfg.train.early_stopping_patience} epochs (best at epoch {state.best.epoch})")
    if decision not in (FAILED, CRITICAL, EARLY_STOP):
        return None
    return Stopping(decision, state.stop_reason, epoch, train=tr, best_score=state.best.score,
                    best_epoch=state.best.epoch)

"""What the training loop says on the console, in one place.

Each function takes plain values and logs; none decides anything. The loop
never calls them: it emits events, and `hooks.Hooks.attach_console` subscribes
these printers (the engine calls the few that open and close the run). Only
rank 0 shows info lines (the others log warnings only, see `engine._train`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..taxonomy import Taxonomy
from ..utils import setup_logging
from .loop_state import CRITICAL, EARLY_STOP, FAILED, EpochEnd, LoopState, Stopping

log = logging.getLogger("sustain.training.engine")

RETRY_HINT = "Lower train.lr, set train.amp=off, or check the data; then --resume auto."


def ensure_console_logging() -> None:
    """Plain messages on stdout when nobody configured logging (Python API, notebooks)."""
    if not (logging.getLogger("sustain").handlers or logging.getLogger().handlers):
        setup_logging()


def resumed(path: Path, state: LoopState, train_batches: int) -> None:
    if state.step:
        log.info("↩️  Resumed from %s at epoch %d, step %d of %d", path, state.epoch + 1, state.step, train_batches)
    else:
        log.info("↩️  Resumed from %s after epoch %d", path, state.epoch)


def nothing_left(state: LoopState, epochs: int) -> None:
    if state.early_stopped:
        log.info("The resumed run had already stopped (%s): nothing left to train", state.stop_reason)
    elif state.epoch >= epochs:
        log.info("All %d epochs were already trained: nothing left to train", epochs)


def position_saved(epoch: int, step: int, total: int, path: Path) -> None:
    log.info("✓ Saved the position: epoch %d, step %d of %d (%s)", epoch, step, total, path)


def nonfinite_step(kind: str, step: int, epoch: int) -> None:
    if kind == "loss":
        log.warning("⚠️  Non-finite loss at step %d (epoch %d): step skipped", step, epoch)
    else:
        log.warning("⚠️  Non-finite gradient norm at step %d (epoch %d): optimizer step skipped", step, epoch)


def epoch_summary(end: EpochEnd, epochs: int, taxonomy: Taxonomy) -> None:
    """The per-class table, the epoch's line, its health line and the trend warnings it raised."""
    from ..evaluate import format_per_class, trends  # loaded by the validation already

    tr, val, verdict, skipped_pct = end.train, end.val, end.verdict, end.skipped_pct
    for line in format_per_class(val, taxonomy):
        log.info(line)
    log.info("Epoch %d/%d: Train Acc %.2f%%, Val Loss %.4f, Val Acc %.2f%%, Macro F1 %.4f", end.epoch,
             epochs, 100 * tr["acc"], val["loss"], 100 * val["acc"], val["macro_f1"])
    health = (f"Health: {verdict} ({skipped_pct:.1f}% of {tr['steps']} steps skipped: "
              f"{tr['nonfinite_loss']} non-finite loss, {tr['nonfinite_grad']} non-finite grad, "
              f"{tr['data_errors']} data errors)")
    if verdict == "healthy":
        log.info("  %s", health)
    else:
        log.warning("⚠️  %s", health)
    for warning in end.warnings:
        log.warning(trends.format_trend_warning(warning))


def stopping(stop: Stopping, monitor: str, patience: int) -> None:
    """Why the run stops: inside an epoch (its position saved) or after one."""
    if stop.decision == FAILED and stop.step:
        log.error("❌ Training stopped: %s. The position (epoch %d, step %d) is saved in last.pth. %s",
                  stop.reason, stop.epoch, stop.step, RETRY_HINT)
    elif stop.decision == FAILED:
        log.error("❌ Training stopped: %s. The checkpoint of epoch %d is saved (last.pth). %s",
                  stop.reason, stop.epoch, RETRY_HINT)
    elif stop.decision == CRITICAL:
        tr = stop.train
        log.error("❌ Training stopped: %s (%d non-finite loss, %d non-finite grad, %d empty batches). "
                  "The checkpoint of epoch %d is saved (last.pth). Frequent NaN/Inf usually means the learning "
                  "rate is too high or fp16 overflows: lower train.lr or set train.amp=off, then --resume auto.",
                  stop.reason, tr["nonfinite_loss"], tr["nonfinite_grad"], tr["empty_batches"], stop.epoch)
    elif stop.decision == EARLY_STOP:
        log.info("⏹️  Early stopping: no gain in %s for %d epochs (best %.4f at epoch %d)",
                 monitor, patience, stop.best_score, stop.best_epoch)


def run_ended(state: LoopState) -> None:
    if state.failed:
        log.error("❌ Training failed: %s", state.stop_reason)
    else:
        log.info("✓ Training completed successfully")

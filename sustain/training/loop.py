"""The epoch loop as free functions over one bundle (`Run`) and one state (`LoopState`).

Read `run_epochs` top to bottom: train an epoch, validate, record, decide,
save. `train_one_epoch` holds the step guards (SPEC §6), in this order:
1. a batch that failed to load is counted (`data_errors`); an empty batch is skipped;
2. the loss must be finite *before* backward, else the step is skipped (`nonfinite_loss`);
3. the gradient norm, after unscaling, must be finite, else the optimizer step is
   skipped and the GradScaler backs off (`nonfinite_grad`);
4. `escalate_after` non-finite steps in a row escalate: AMP off, then LR halved,
   then the run stops with a checkpoint and an explanation;
5. each epoch's skipped share gets a verdict; a critical epoch stops the run.

Gradient accumulation is an inner loop: the micro-batches of one optimizer
update, then the update. A mid-epoch checkpoint (every
`train.checkpoint_every_minutes`, or on a stop signal) is taken only between
updates, so no accumulated gradient is ever lost or saved.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from ..evaluate import trends
from . import console
from .interrupts import signal_name
from .loop_state import (
    CONTINUE,
    CRITICAL,
    EARLY_STOP,
    POSTFIX_EVERY,
    BestScore,
    EpochProgress,
    LoopState,
    StepOutcome,
    decide,
    is_improvement,
    update_groups,
)
from .optim import current_lr, set_lr
from .precision import images_on_device
from .resume import save_epoch_checkpoints, save_position
from .trainer import Trainer

log = logging.getLogger("sustain.training.engine")


class Stopped(Exception):
    """A stop signal, after the position was saved; `engine` turns it into `Interrupted`."""

    def __init__(self, signum: int, epoch: int, step: int, total: int) -> None:
        super().__init__(signal_name(signum))
        self.signum, self.epoch, self.step, self.total = signum, epoch, step, total


# =========================================================================== epochs


def run_epochs(trainer: Trainer, state: LoopState) -> None:
    epochs = trainer.cfg.train.epochs
    if state.early_stopped or state.epoch >= epochs:
        console.nothing_left(state, epochs)
        if state.early_stopped:
            return
    for epoch in range(state.epoch + 1, epochs + 1):
        t0 = time.perf_counter()
        train_stats = train_one_epoch(trainer, state, epoch)
        if train_stats is None:
            console.stopped_inside_epoch(state.stop_reason, epoch, state.step)
            break
        val = validate(trainer)
        state.epoch = epoch
        record_epoch(trainer, state, epoch, train_stats, val, time.perf_counter() - t0)
        improved = update_best(state, trainer.cfg.train.monitor, epoch, val)
        decision = decide(state, trainer.cfg)
        apply_decision(trainer, state, decision, epoch, train_stats)
        signum = trainer.dist.agree_signal(trainer.stop.signum)  # a signal during validation stops here
        if signum:
            state.note_event("interrupted", epoch, trainer.loaders.train_batches, trainer.loaders.train_batches,
                             signal_name(signum))
        save_epoch_checkpoints(trainer, state, epoch, val, improved)
        for hook in trainer.hooks.checkpoint:
            hook(epoch)
        if signum and epoch < epochs:
            raise Stopped(signum, epoch + 1, 0, trainer.loaders.train_batches)
        if decision != CONTINUE:
            break
    trainer.dist.barrier()


def train_one_epoch(trainer: Trainer, state: LoopState, epoch: int) -> dict[str, Any] | None:
    """Train epoch `epoch` from batch `state.step` on; None when the guards stopped the run inside it."""
    total, start = trainer.loaders.train_batches, state.step
    trainer.fwd_model.train()
    trainer.loaders.set_epoch(epoch, start)
    progress = EpochProgress.resume(trainer.device, state.partial, trainer.dist.rank)
    seen_before = progress.seen
    bar = tqdm(itertools.islice(trainer.loaders.train, total - start), initial=start, total=total,
               desc=f"Epoch {epoch}/{trainer.cfg.train.epochs}", disable=not trainer.dist.is_main, dynamic_ncols=True)
    batches = iter(bar)
    t_start = time.perf_counter()
    for lo, hi in update_groups(start, total, trainer.cfg.train.accum_steps):
        pending = 0  # micro-batches whose gradients wait for this update
        for i in range(lo, hi):
            batch = next(batches)
            step = train_step(trainer, state, epoch, batch, i + 1 == hi, progress)
            pending += step.trained
            stop = step.guard_stop
            if i + 1 == hi and pending and not stop:
                stop = update(trainer, state, epoch, step.index, pending, progress)
            for hook in trainer.hooks.step_end:
                hook(state.micro_steps, batch.images, progress, t_start)
            if trainer.dist.is_main and (i % POSTFIX_EVERY == 0 or i + 1 == total) and progress.seen:
                bar.set_postfix(progress.postfix(), refresh=False)  # the only mid-epoch read-back of the sums
            if stop and i + 1 < total:  # the guards stopped the run inside the epoch: resume at the next step
                bar.close()
                save_position(trainer, state, epoch, i + 1, progress, reason="guards")
                return None
            if stop:
                break
        if stop:
            break
        if hi < total and (step.signum or step.save_due):  # between updates: nothing accumulated is lost
            save_position(trainer, state, epoch, hi, progress, reason=signal_name(step.signum) if step.signum else None)
            if step.signum:
                bar.close()
                raise Stopped(step.signum, epoch, hi, total)
    train_time = time.perf_counter() - t_start
    bar.close()
    trainer.optimizer.zero_grad(set_to_none=True)
    state.step, state.partial = 0, None
    return _epoch_stats(trainer, progress, seen_before, train_time)


def _epoch_stats(trainer: Trainer, progress: EpochProgress, seen_before: int, train_time: float) -> dict[str, Any]:
    """The epoch's train loss, accuracy and guard counts, summed over the ranks; counts go to the totals."""
    counts = progress.counts
    loss_sum, correct, seen, errors = trainer.dist.sum(float(progress.loss_sum), int(progress.correct),
                                                   progress.seen, counts["data_errors"])
    counts["data_errors"] = int(errors)
    for k, v in counts.items():
        trainer.guards.state.totals[k] = trainer.guards.state.totals.get(k, 0) + v
    return {
        "loss": loss_sum / seen if seen else float("nan"),
        "acc": correct / seen if seen else float("nan"),
        "images_per_second": (progress.seen - seen_before) / train_time if train_time > 0 else 0.0,
        **counts,
    }


def train_step(trainer: Trainer, state: LoopState, epoch: int, batch: Any, boundary: bool,
               progress: EpochProgress) -> StepOutcome:
    """Forward, the loss guard, backward. The running sums stay on the device (no read-back)."""
    counts = progress.counts
    step = state.micro_steps
    state.micro_steps += 1
    counts["steps"] += 1
    counts["data_errors"] += int(batch.failed)
    has_data, finite = len(batch) > 0, None
    sync = boundary or not trainer.dist.enabled  # DDP: all-reduce gradients only on the update step
    if has_data:
        images = images_on_device(batch, trainer.device, trainer.channels_last)
        targets = batch.targets.to(trainer.device, non_blocking=True)
        with trainer.autocast(), (contextlib.nullcontext() if sync else trainer.fwd_model.no_sync()):
            logits = trainer.fwd_model(images)
            loss = trainer.loss_fn(logits, targets)
        for hook in trainer.hooks.loss:
            loss = hook(step, loss)
        finite = torch.isfinite(loss.detach())
    # The one read-back a step needs: backward must never see a non-finite loss. Under DDP the
    # same exchange ANDs the checks over the ranks and ORs a stop signal and a due checkpoint.
    has_data, loss_finite, signum, save_due = trainer.dist.agree_step(
        has_data, finite, trainer.stop.signum, trainer.dist.is_main and trainer.clock.due())
    outcome = StepOutcome(index=step, signum=signum, save_due=save_due)
    if not has_data:
        counts["skipped"] += 1
        counts["empty_batches"] += 1
    elif not loss_finite:
        counts["skipped"] += 1
        counts["nonfinite_loss"] += 1
        if trainer.dist.is_main:
            console.nonfinite_step("loss", step, epoch)
        outcome.guard_stop = on_nonfinite(trainer, state, epoch, step, "loss")
    else:
        with (contextlib.nullcontext() if sync else trainer.fwd_model.no_sync()):
            trainer.guards.backward(loss / trainer.cfg.train.accum_steps)
        progress.add(loss.detach(), targets.gather(1, logits.detach().argmax(dim=1, keepdim=True)) > 0)
        outcome.trained = 1
    return outcome


def update(trainer: Trainer, state: LoopState, epoch: int, step: int, pending: int, progress: EpochProgress) -> bool:
    """The optimizer update after `pending` micro-batches; True when the guards stop the run."""
    if optimizer_step(trainer, state, step):
        return False
    progress.counts["skipped"] += pending
    progress.counts["nonfinite_grad"] += 1
    if trainer.dist.is_main:
        console.nonfinite_step("grad", step, epoch)
    return on_nonfinite(trainer, state, epoch, step, "grad")


def optimizer_step(trainer: Trainer, state: LoopState, step: int) -> bool:
    """The guarded update, then the schedule and EMA. False when the step was skipped."""
    for hook in trainer.hooks.grads:
        hook(step, trainer.model)
    if not trainer.guards.optimizer_step(trainer.model, trainer.optimizer, trainer.cfg.train.grad_clip):
        return False
    state.updates += 1
    set_lr(trainer.optimizer, trainer.scheduler, state.updates, trainer.guards.state.lr_factor)
    if trainer.ema is not None:
        trainer.ema.update(trainer.model, step=state.updates)
    return True


def on_nonfinite(trainer: Trainer, state: LoopState, epoch: int, step: int, kind: str) -> bool:
    """Count a non-finite step towards escalation; True when the run must stop now."""
    event = trainer.guards.on_nonfinite(epoch, step, kind)
    if event is None:
        return False
    if event["action"] == "lr_halved":
        set_lr(trainer.optimizer, trainer.scheduler, state.updates, trainer.guards.state.lr_factor)
    elif event["action"] == "stop":
        state.failed = True
        state.stop_reason = f"{event['after']} at step {step} (epoch {epoch}) after escalating (AMP off, LR halved)"
    return event["action"] == "stop"


# =========================================================================== validation and records


def validate(trainer: Trainer) -> dict[str, Any]:
    # scikit-learn (metrics, evaluate, report) takes ≈ 2 s to import: it loads when the first epoch
    # is scored, so a run that fails its config, data or sanity checks fails fast.
    from ..evaluate import collect_predictions, epoch_metrics

    preds = collect_predictions(trainer.eval_model(), trainer.loaders.val, trainer.device, trainer.autocast_factory(),
                                desc="Validation", progress=trainer.dist.is_main)
    logits, targets, source_ids = trainer.dist.gather_predictions(preds)
    m = epoch_metrics(logits.softmax(dim=1), targets, trainer.taxonomy, source_ids, trainer.sources)
    m["loss"] = float(trainer.val_loss_fn(logits, targets)) if len(logits) else float("nan")
    m["samples"] = int(len(logits))
    (m["failed"],) = trainer.dist.sum(preds.failed)
    if m["failed"] and trainer.dist.is_main:
        log.warning("⚠️  %d validation images could not be loaded and were left out", m["failed"])
    return m


def record_epoch(trainer: Trainer, state: LoopState, epoch: int, tr: dict[str, Any], val: dict[str, Any],
                 seconds: float) -> None:
    """The epoch's history row and health entry; rank 0 writes the history and says how it went."""
    skipped_pct = 100.0 * tr["skipped"] / max(1, tr["steps"])
    verdict = trainer.guards.verdict(skipped_pct)
    entry = {
        "epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": val["loss"],
        "val_acc": val["acc"], "val_macro_f1": val["macro_f1"], "val_set_acc": val.get("set_acc"),
        "val_samples": val["samples"], "lr": current_lr(trainer.optimizer), "skipped": skipped_pct / 100.0,
        "health": verdict, "epoch_seconds": seconds, "images_per_second": tr["images_per_second"],
        "per_class_f1": [float(f) for f in val["per_class_f1"]],
    }
    state.history.append(entry)
    state.health.append({"epoch": epoch, "verdict": verdict, "skipped_pct": round(skipped_pct, 3),
                         **{k: tr[k] for k in ("steps", "skipped", "nonfinite_loss", "nonfinite_grad", "data_errors",
                                               "empty_batches")},
                         "val_data_errors": int(val["failed"])})
    if not trainer.dist.is_main:
        return
    state.history.write(trainer.out_dir)
    for hook in trainer.hooks.epoch_end:
        hook(entry)
    from ..evaluate import format_per_class

    console.epoch_summary(epoch, trainer.cfg.train.epochs, tr, val, verdict, skipped_pct,
                          format_per_class(val, trainer.taxonomy))
    printed = {w["id"] for w in state.trend_warnings}
    for warning in trends.trend_warnings(state.history.to_dict()):
        if warning["id"] not in printed:
            state.trend_warnings.append(warning)
            log.warning(trends.format_trend_warning(warning))


def update_best(state: LoopState, monitor: str, epoch: int, val: dict[str, Any]) -> bool:
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


def apply_decision(trainer: Trainer, state: LoopState, decision: str, epoch: int, tr: dict[str, Any]) -> None:
    """Record a stop in the state (last.pth, run.json) and say why; before the epoch's checkpoints,
    so a resume of an early-stopped run does not train on."""
    cfg = trainer.cfg
    if decision == CRITICAL:
        state.failed = True
        state.stop_reason = (f"{state.health[-1]['skipped_pct']:.1f}% of the steps of epoch {epoch} were skipped "
                             f"(critical above {cfg.guards.critical_pct:g}%)")
    elif decision == EARLY_STOP:
        state.early_stopped = True
        state.stop_reason = (f"early stopping: no gain in {cfg.train.monitor} for "
                             f"{cfg.train.early_stopping_patience} epochs (best at epoch {state.best.epoch})")
    console.decision(decision, state, cfg, epoch, tr)

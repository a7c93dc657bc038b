"""The epoch loop as free functions over one bundle (`Trainer`) and one state (`LoopState`).

Read `run_epochs` top to bottom: train an epoch, validate, close the epoch
(`loop_state.close_epoch`: record, decide), emit what happened, save. The
loop says nothing itself: each thing that happens is an event of
`trainer.hooks`, and the console and tracking are its subscribers.
`train_one_epoch` walks the step guards (SPEC §6), in this order:
1. a batch that failed to load is counted (`data_errors`); an empty batch is skipped;
2. the loss must be finite *before* backward, else the step is skipped (`nonfinite_loss`);
3. the gradient norm, after unscaling, must be finite, else the optimizer step is
   skipped and the GradScaler backs off (`nonfinite_grad`);
4. `escalate_after` non-finite steps in a row escalate: AMP off, then LR halved,
   then the run stops with a checkpoint and an explanation;
5. each epoch's skipped share gets a verdict; a critical epoch stops the run.
Steps 1-4 are `training.step`; 5 is `close_epoch`.

Gradient accumulation is an inner loop: the micro-batches of one optimizer
update, then the update. A mid-epoch checkpoint (every
`train.checkpoint_every_minutes`, or on a stop signal) is taken only between
updates, so no accumulated gradient is ever lost or saved.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

from tqdm.auto import tqdm

from ..artifacts import LAST
from .interrupts import Interrupted
from .loop_state import CONTINUE, FAILED, LoopState, Stopping, close_epoch
from .optim import head_lr
from .progress import POSTFIX_EVERY, EpochProgress, update_groups
from .saving import save_best, save_last
from .step import train_step, update
from .trainer import Trainer

log = logging.getLogger("sustain.training.engine")


def run_epochs(trainer: Trainer, state: LoopState) -> None:
    """The remaining epochs; a stop signal raises `Interrupted` once the position is saved."""
    epochs, total, hooks = trainer.cfg.train.epochs, trainer.loaders.train_batches, trainer.hooks
    if state.early_stopped:
        return
    for epoch in range(state.epoch + 1, epochs + 1):
        t0 = time.perf_counter()
        progress = train_one_epoch(trainer, state, epoch)
        if progress is None:  # the guards stopped the run inside the epoch; its position is saved
            for hook in hooks.stopping:
                hook(Stopping(FAILED, state.stop_reason, epoch, state.step))
            break
        val = validate(trainer)
        lr = head_lr(trainer.optimizer, trainer.scheduler, state.updates, trainer.guards.state.lr_factor)
        tr = progress.epoch_stats(trainer.dist.sum)
        end = close_epoch(state, trainer.cfg, epoch, tr, val, lr, time.perf_counter() - t0)
        for k, v in progress.counts.items():  # the run's totals (run.json, the checklist)
            trainer.guards.state.totals[k] = trainer.guards.state.totals.get(k, 0) + v
        if trainer.dist.is_main:
            state.history.write(trainer.out_dir)
            for hook in hooks.epoch_end:
                hook(end)
        if end.stopping is not None:  # said before the checkpoints are written
            for hook in hooks.stopping:
                hook(end.stopping)
        signum = trainer.dist.agree_signal(trainer.stop.signum)  # a signal during validation stops here
        signal = Interrupted(signum, epoch + 1, 0, total, trainer.out_dir / LAST, trainer.dist.world) if signum else None
        if signal:
            state.note_event("interrupted", epoch, total, total, signal.name)
        if end.improved:
            save_best(trainer, state, epoch, val)
        save_last(trainer, state)
        trainer.dist.barrier()
        for hook in hooks.checkpoint:
            hook(epoch)
        if signal and epoch < epochs:
            raise signal
        if end.decision != CONTINUE:
            break
    trainer.dist.barrier()


def train_one_epoch(trainer: Trainer, state: LoopState, epoch: int) -> EpochProgress | None:
    """Train epoch `epoch` from batch `state.step` on: its sums, or None when the guards stopped the run inside it."""
    total, start = trainer.loaders.train_batches, state.step
    trainer.fwd_model.train()
    trainer.loaders.set_epoch(epoch, start)
    progress = EpochProgress.resume(trainer.device, state.partial, trainer.dist.rank)
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
            if i + 1 == hi and pending and not step.guard_stop:
                update(trainer, state, epoch, step, pending, progress)
            for hook in trainer.hooks.step_end:
                hook(state.micro_steps, batch.images, progress, t_start)
            if trainer.dist.is_main and (i % POSTFIX_EVERY == 0 or i + 1 == total) and progress.seen:
                bar.set_postfix(progress.postfix(), refresh=False)  # the only mid-epoch read-back of the sums
            if step.guard_stop:
                break
        stop, at = step.guard_stop, i + 1
        if stop:  # the guards' last rung: the run fails here (last.pth and run.json say why)
            state.failed, state.stop_reason = True, stop
        if (stop or step.signum or step.save_due) and at < total:  # between updates: nothing accumulated is lost
            signal = (Interrupted(step.signum, epoch, at, total, trainer.out_dir / LAST, trainer.dist.world)
                      if step.signum and not stop else None)
            if stop:
                bar.close()
            state.note_position(epoch, at, total, trainer.dist.gather(progress.state_dict()),
                                "guards" if stop else signal.name if signal else None)
            save_last(trainer, state)
            if trainer.dist.is_main:
                for hook in trainer.hooks.position:
                    hook(epoch, at, total, trainer.out_dir / LAST)
            if stop:
                return None
            if signal:
                bar.close()
                raise signal
        if stop:
            break
    progress.seconds = time.perf_counter() - t_start
    bar.close()
    trainer.optimizer.zero_grad(set_to_none=True)
    state.step, state.partial = 0, None
    return progress


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

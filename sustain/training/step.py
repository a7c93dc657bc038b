"""One training step (SPEC §6): a micro-step (forward, the loss guard, backward) and the guarded update.

`train_step` holds guards 1 and 2 of `loop`'s list: an empty batch is skipped,
and the loss must be finite *before* backward. `update`, after the last
micro-step of an update group, holds guard 3: the LR for this update (a pure
function of the update count, `optim.lr_at`), then the gradient norm, after
unscaling, must be finite, else the optimizer step is skipped. Each non-finite
step is an event (`hooks.nonfinite`) and counts towards the escalation
(`Guards.on_nonfinite`), which the step hands up (`StepOutcome.escalation`):
its last rung stops the run, and the loop records why.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from .loop_state import LoopState
from .optim import set_lr
from .precision import images_on_device
from .progress import EpochProgress, StepOutcome
from .trainer import Trainer


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
            for hook in trainer.hooks.nonfinite:
                hook("loss", step, epoch)
        outcome.escalation = trainer.guards.on_nonfinite(epoch, step, "loss")
    else:
        with (contextlib.nullcontext() if sync else trainer.fwd_model.no_sync()):
            trainer.guards.backward(loss / trainer.cfg.train.accum_steps)
        progress.add(loss.detach(), targets.gather(1, logits.detach().argmax(dim=1, keepdim=True)) > 0)
        outcome.trained = 1
    return outcome


def update(trainer: Trainer, state: LoopState, epoch: int, outcome: StepOutcome, pending: int,
           progress: EpochProgress) -> None:
    """The guarded update after `pending` micro-batches, then EMA; a skipped one's escalation joins `outcome`,
    the micro-step that closed the update group."""
    step = outcome.index
    for hook in trainer.hooks.grads:
        hook(step, trainer.model)
    set_lr(trainer.optimizer, trainer.scheduler, state.updates, trainer.guards.state.lr_factor)
    if trainer.guards.optimizer_step(trainer.model, trainer.optimizer, trainer.cfg.train.grad_clip):
        state.updates += 1
        if trainer.ema is not None:
            trainer.ema.update(trainer.model, step=state.updates)
        return
    progress.counts["skipped"] += pending
    progress.counts["nonfinite_grad"] += 1
    if trainer.dist.is_main:
        for hook in trainer.hooks.nonfinite:
            hook("grad", step, epoch)
    outcome.escalation = trainer.guards.on_nonfinite(epoch, step, "grad")

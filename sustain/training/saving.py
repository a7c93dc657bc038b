"""What the loop writes as it goes: `last.pth` and the best weights.

The loop decides when (a position inside an epoch, an epoch's end) and puts
the position into its state first (`LoopState.note_position`); `save_last`
then writes everything an exact resume needs (`training_state`, which
`training.resume.restore_training_state` reads back) and `save_best` the best
weights so far, through `training.checkpoints`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ..artifacts import LAST
from ..model import save_checkpoint
from . import checkpoints as ckpt
from .checkpoints import FORMAT_VERSION
from .loop_state import LoopState, now
from .trainer import Trainer

log = logging.getLogger("sustain.training.engine")


def save_last(trainer: Trainer, state: LoopState) -> None:
    """Every rank's RNG is gathered (a collective); rank 0 writes last.pth, and a signal that arrives
    meanwhile waits for the write to finish."""
    rng = trainer.dist.gather_rng()
    if trainer.dist.is_main:
        payload = training_state(trainer, state, rng)
        with trainer.stop.saving_block():
            save_checkpoint(trainer.out_dir / LAST, payload)
    trainer.clock.reset()


def save_best(trainer: Trainer, state: LoopState, epoch: int, val: dict[str, Any]) -> None:
    """Rank 0 writes the new best weights (and their export) and names them in the state, before last.pth."""
    if not trainer.dist.is_main:
        return
    weights = ckpt.state_dict_copy(trainer.eval_model())  # later training steps cannot change it
    meta = {**trainer.meta, "epoch": epoch, "val_acc": val["acc"], "val_macro_f1": val["macro_f1"]}
    path = ckpt.save_best(trainer.out_dir, weights, meta)
    state.best.path = path.name
    log.info("✓ Saved best model checkpoint: %s", path)


def training_state(trainer: Trainer, state: LoopState, rng: list[dict[str, Any]]) -> dict[str, Any]:
    """The `last.pth` payload: everything an exact resume needs (tensors and plain types);
    `restore_training_state` reads it back."""
    # No scheduler state: the LR is a pure function of the config and `updates` (optim.lr_at).
    return {
        "format": FORMAT_VERSION,
        "kind": "last",
        "classes": list(trainer.taxonomy.classes),
        "manifest_hash": trainer.meta["manifest_hash"],
        "meta": dict(trainer.meta),
        "config": trainer.cfg.to_dict(),
        **state.state_dict(),
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "ema": trainer.ema.module.state_dict() if trainer.ema is not None else None,
        "guard": trainer.guards.state_dict(),
        "scaler": trainer.guards.scaler.state_dict(),
        "precision": {"device": trainer.plan.type, "plan": dataclasses.asdict(trainer.precision)},
        "rng": rng,
        "saved_at": now(),
        **{key: provide() for key, provide in trainer.hooks.saved.items()},  # tracking: the same MLflow run and step
    }

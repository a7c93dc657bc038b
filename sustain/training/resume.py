"""Resuming: `last.pth` with everything an exact resume needs, where to find it, and whether it fits.

`training_state` writes the payload and `restore_training_state` reads it
back into freshly built objects; `LoopState.state_dict` is the loop's part.
`resolve_resume` finds the file `--resume` names and `check_resume_compatible`
refuses one from another class list, data manifest or a newer format. The
best weights are saved here too (`save_best_checkpoint`), through
`training.checkpoints`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts import LAST
from ..config import Config
from ..errors import UsageError
from ..model import save_checkpoint
from . import checkpoints as ckpt
from . import console
from .checkpoints import FORMAT_VERSION
from .guards import Guards
from .loop_state import EpochProgress, LoopState, now
from .trainer import Trainer

log = logging.getLogger("sustain.training.engine")



def resolve_resume(resume: str | None, out_dir: str | Path) -> Path | None:
    """The checkpoint `--resume auto|PATH` points at (None: start fresh)."""
    if not resume:
        return None
    if resume == "auto":
        path = Path(out_dir) / LAST
        if path.is_file():
            return path
        log.info("No %s in %s: starting a new run", LAST, out_dir)
        return None
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise UsageError(f"Checkpoint to resume from not found: {path}", "use --resume auto or the path of a last.pth")
    return path


def check_resume_compatible(state: Mapping[str, Any], classes: list[str], manifest_hash: str, path: Path) -> None:
    """Refuse a resume whose class list or data manifest differs from this run's."""
    if state.get("kind") != "last":
        raise UsageError(f"{path} is not a resumable checkpoint (kind {state.get('kind')!r})",
                         "resume from last.pth; best checkpoints hold weights only")
    fmt = state.get("format", 1)  # version 1 files lack a position: they resume at an epoch's end
    if not isinstance(fmt, int) or fmt > FORMAT_VERSION:
        raise UsageError(f"{path} has checkpoint format {fmt!r}; this Sustain reads up to "
                         f"{FORMAT_VERSION}", "update Sustain, or start a new run in another output folder")
    saved = list(state.get("classes") or [])
    if saved != list(classes):
        added = [c for c in classes if c not in saved]
        removed = [c for c in saved if c not in classes]
        detail = "; ".join(filter(None, [f"added {added}" if added else "", f"removed {removed}" if removed else ""]))
        raise UsageError(
            f"Cannot resume from {path}: the class list changed ({detail or 'same classes, different order'})",
            "resume with the taxonomy the run started with, or start a new run in another output folder",
        )
    if state.get("manifest_hash") != manifest_hash:
        raise UsageError(
            f"Cannot resume from {path}: the data manifest changed "
            f"(hash {state.get('manifest_hash')} in the checkpoint, {manifest_hash} now)",
            "resume with the same data and split, or start a new run in another output folder",
        )



def save_position(trainer: Trainer, state: LoopState, epoch: int, step: int, progress: EpochProgress,
                  reason: str | None) -> None:
    """A mid-epoch last.pth: `step` batches of `epoch` are trained; every rank's sums and RNG go in."""
    state.step = step
    state.partial = trainer.dist.gather(progress.state_dict())
    if reason is not None:
        state.note_event("interrupted", epoch, step, trainer.loaders.train_batches, reason)
    save_last(trainer, state, trainer.dist.gather_rng())
    if trainer.dist.is_main:
        console.position_saved(epoch, step, trainer.loaders.train_batches, trainer.out_dir / LAST)


def save_last(trainer: Trainer, state: LoopState, rng: list[dict[str, Any]]) -> None:
    """Rank 0 writes last.pth; a signal that arrives meanwhile waits for the write to finish."""
    if trainer.dist.is_main:
        with trainer.stop.saving_block():
            save_checkpoint(trainer.out_dir / LAST, training_state(trainer, state, rng))
    trainer.clock.reset()


def save_epoch_checkpoints(trainer: Trainer, state: LoopState, epoch: int, val: dict[str, Any], improved: bool) -> None:
    """The best weights when they improved, then last.pth; every rank takes part."""
    rng = trainer.dist.gather_rng()  # a collective: every rank takes part
    if trainer.dist.is_main and improved:
        meta = {**trainer.meta, "epoch": epoch, "val_acc": val["acc"], "val_macro_f1": val["macro_f1"]}
        path = ckpt.save_best(trainer.out_dir, ckpt.state_dict_copy(trainer.eval_model()), meta)
        state.best.path = path.name
        log.info("✓ Saved best model checkpoint: %s", path)
    save_last(trainer, state, rng)
    trainer.dist.barrier()


def training_state(trainer: Trainer, state: LoopState, rng: list[dict[str, Any]]) -> dict[str, Any]:
    """The `last.pth` payload: everything an exact resume needs (tensors and plain types);
    `restore_training_state` reads it back."""
    # No scheduler state: the LR is a pure function of the config and `updates` (set_lr).
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


def restore_training_state(saved: dict[str, Any], cfg: Config, model: nn.Module, optimizer: torch.optim.Optimizer,
                           ema: Any, state: LoopState, guards: Guards) -> None:
    """Load everything last.pth holds into the freshly built objects and the loop state.

    The LR schedule is a pure function of the config and the update count: it
    continues at the saved update with this config's LR, warmup and epochs, so a
    resume may lower `train.lr` or add epochs (the optimizer's moments are kept).
    """
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if ema is not None and saved.get("ema") is not None:
        ema.module.load_state_dict(saved["ema"])
    state.load_state_dict(saved)
    saved_lr = saved["config"]["train"]["lr"]
    guards.load_state_dict(saved["guard"], saved.get("scaler"), keep_lr_factor=saved_lr == cfg.train.lr)
    if saved_lr != cfg.train.lr:  # the user chose a new LR: it replaces an automatic halving
        log.info("  train.lr changed from %g to %g: the schedule continues at update %d with the new LR",
                 saved_lr, cfg.train.lr, state.updates)
    if saved["failed"]:  # the run stopped on its guards: a resume continues from the saved epoch
        log.warning("⚠️  The saved run had stopped (%s); continuing from its checkpoint", saved["stop_reason"])
        guards.state.streak = 0

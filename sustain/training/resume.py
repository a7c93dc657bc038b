"""Resuming: where `last.pth` is, whether it fits, and reading it back.

`load_resume` is the one call: `resolve_resume` finds the file `--resume`
names, `check_resume_compatible` refuses one from another class list, data
manifest or a newer format, and `restore_training_state` reads the payload
that `training.saving.training_state` wrote back into freshly built objects;
`LoopState.load_state_dict` is the loop's part.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts import LAST
from ..config import Config
from ..device import resumed_precision
from ..errors import UsageError
from ..model import load_checkpoint
from . import console
from .checkpoints import FORMAT_VERSION
from .guards import Guards
from .loop_state import LoopState
from .trainer import Trainer

log = logging.getLogger("sustain.training.engine")


def load_resume(trainer: Trainer, state: LoopState, resume: str | None) -> tuple[Path | None, dict[str, Any] | None]:
    """A fresh start, or everything last.pth holds loaded into the trainer's objects and `state`."""
    resume_path = resolve_resume(resume, trainer.out_dir)
    if resume_path is None and (trainer.out_dir / LAST).is_file():
        log.warning("⚠️  %s holds an earlier run: its checkpoints will be replaced (--resume auto continues it)",
                    trainer.out_dir)
    if resume_path is None:
        return None, None
    saved = load_checkpoint(resume_path)
    check_resume_compatible(saved, list(trainer.taxonomy.classes), trainer.meta["manifest_hash"], resume_path)
    kept = resumed_precision(trainer.precision, saved.get("precision"))
    if kept is not trainer.precision:  # before the guards' state: their scaler follows the plan
        trainer.precision = trainer.guards.precision = kept
        log.info(kept.line)
    restore_training_state(saved, trainer.cfg, trainer.model, trainer.optimizer, trainer.ema, state, trainer.guards)
    console.resumed(resume_path, state, trainer.loaders.train_batches)
    return resume_path, saved


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

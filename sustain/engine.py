"""The training loop (SPEC §6, §7): `train(cfg, resume=None) -> RunResult`.

Read `_train` top to bottom: it is the run. Setup prints the startup sequence
(seed, device, model, transform validation, data summary, sanity check), the
epoch loop trains with the step guards, validates, writes the metrics
history and the checkpoints, and the end evaluates the best weights, builds
the report, prints the Success Criteria Checklist and writes `run.json`.

Guards, per step and in this order (SPEC §6):
1. a batch that failed to load is counted (`data_errors`); an empty batch is skipped;
2. the loss must be finite *before* backward, else the step is skipped (`nonfinite_loss`);
3. the gradient norm, after unscaling, must be finite, else the optimizer step is
   skipped and the GradScaler backs off (`nonfinite_grad`);
4. `escalate_after` non-finite steps in a row escalate: AMP off, then LR halved,
   then the run stops with a checkpoint and an explanation;
5. each epoch's skipped share gets a verdict; a critical epoch stops the run.

Under `torchrun` the same loop runs DDP (gloo on CPU, NCCL on CUDA); only
rank 0 prints, shows bars and writes files, and validation gathers every
rank's predictions so each sample counts exactly once.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torchvision
from torch import nn
from tqdm.auto import tqdm

from . import checkpoints as ckpt
from . import trends
from .artifacts import HISTORY_KEYS, History, RunRecord
from .components import (
    autocast_context,
    build_ema,
    build_optimizer,
    build_scheduler,
    build_train_loss,
    current_lr,
    export_meta,
    images_on_device,
    plan_cpu_measured,
    prepare_output_dir,
    sanity_check,
    seed_everything,
    set_lr,
)
from .config import Config
from .data import image_cache
from .data.lake import check_sources, record_image_cache
from .device import (
    DevicePlan,
    PrecisionPlan,
    apply_backend_flags,
    detect_backends,
    in_jupyter,
    plan_channels_last,
    plan_device,
    plan_num_workers,
    plan_precision,
)
from .distributed import Distributed
from .guards import COUNTS, Guards
from .interrupts import Interrupted, StopRequests, resume_command, signal_name
from .loaders import Loaders, build_loaders
from .losses import PartialLabelLoss
from .model import build_model, parameter_summary
from .taxonomy import Taxonomy, build_taxonomy
from .tracking import Tracker
from .transforms import (
    build_eval_transform,
    build_train_transform,
    resolve_data_config,
    validate_transforms,
)
from .utils import cpu_count, finite_or_none, setup_logging

log = logging.getLogger("sustain.engine")



@dataclass
class RunResult:
    ok: bool
    output_dir: Path
    epochs_completed: int
    history: dict[str, list[Any]]
    best_checkpoint: Path | None = None
    best_epoch: int | None = None
    best_val_acc: float | None = None
    best_macro_f1: float | None = None
    stop_reason: str | None = None
    checklist: list[dict[str, Any]] = field(default_factory=list)


# =========================================================================== the run


def train(cfg: Config, resume: str | None = None) -> RunResult:
    """Train the model `cfg` describes; `resume` is None, 'auto' or a checkpoint path."""
    threads = torch.get_num_threads()
    try:
        with Tracker.create(cfg) as tracker:  # tracking: an unreachable server is exit 2; closed on any exit
            return _train(cfg, resume, tracker)
    finally:
        torch.set_num_threads(threads)  # the CPU plan may lower it for the run


def _train(cfg: Config, resume: str | None, tracker: Tracker) -> RunResult:
    _ensure_console_logging()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    dist = Distributed.from_env()
    if not dist.is_main:
        logging.getLogger("sustain").setLevel(logging.WARNING)
    out_dir = prepare_output_dir(cfg.output_dir)  # before anything slow: fail early
    taxonomy = build_taxonomy(**cfg.taxonomy.model_dump())
    check_sources(cfg, taxonomy)  # likewise: a missing dataset must not wait for a model download

    # ---- setup: seed, device, model, transforms ----------------------------
    seed_everything(cfg.seed + dist.rank)  # ranks differ in augmentation, DDP syncs the weights
    log.info("✓ Random seed set to %d", cfg.seed)
    backends = detect_backends()
    plan = plan_device(cfg.device, backends)
    apply_backend_flags(plan)
    precision = plan_precision(plan.type, cfg.train.amp, backends.cuda_bf16)
    device = dist.init(plan)
    log.info("%s, %s%s", plan.line, precision.label, f", DDP world size {dist.world}" if dist.enabled else "")

    log.info("Creating model: %s", cfg.model.name)
    model = build_model(cfg.model, taxonomy.num_classes, plan.type)
    log.info(parameter_summary(model))
    data_config = resolve_data_config(model, cfg.model)
    size = data_config["input_size"][-1]
    train_tf, eval_tf = build_train_transform(data_config, cfg.data), build_eval_transform(data_config)
    validate_transforms(train_tf, eval_tf, size)

    # ---- data ----------------------------------------------------------------
    t = time.perf_counter()
    lake = dist.ingest(cfg, taxonomy, out_dir)
    timings["ingest_seconds"] = time.perf_counter() - t
    workers = plan_num_workers(cfg.data.num_workers, plan.type, cpu_count=cpu_count(), in_jupyter=in_jupyter(),
                               platform=sys.platform, world_size=dist.world)
    img_cache = image_cache.for_config(cfg.data, size, data_config["crop_pct"])  # None: data.image_cache off
    loaders = build_loaders(cfg, lake, taxonomy, train_tf, eval_tf, plan, workers, dist, img_cache)

    # ---- model, loss, optimizer, schedule ------------------------------------
    channels_last = plan_channels_last(cfg.model.channels_last, plan.type,
                                       sum(isinstance(m, nn.Conv2d) for m in model.modules()))
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    loss_fn = build_train_loss(cfg, lake, taxonomy).to(device)
    val_loss_fn = PartialLabelLoss()  # validation loss is the plain NLL: no smoothing, no weights
    optimizer = build_optimizer(cfg, model)
    updates_per_epoch = math.ceil(loaders.train_batches / cfg.train.accum_steps)
    scheduler = build_scheduler(cfg, optimizer, updates_per_epoch)
    ema = build_ema(cfg, model)
    t = time.perf_counter()
    batch = loaders.sanity_batch()
    load_seconds = time.perf_counter() - t
    if img_cache is not None and plan.type == "cpu":  # that load filled the cache; the epochs read from it
        t = time.perf_counter()
        batch = loaders.sanity_batch()
        load_seconds = time.perf_counter() - t
    sanity_check(model, batch, loss_fn, device, precision, taxonomy.num_classes, size, channels_last)
    if plan.type == "cpu":  # measured CPU plan (docs/performance.md); loaders start no worker until iterated
        cpu = plan_cpu_measured(cfg, model, batch, loss_fn, device, precision, load_seconds, channels_last, dist.world)
        if cpu.workers != workers:
            workers = cpu.workers
            loaders = build_loaders(cfg, lake, taxonomy, train_tf, eval_tf, plan, workers, dist, img_cache)
    log.info("  DataLoader workers: %d%s", workers,
             f", CPU threads: {torch.get_num_threads()}" if plan.type == "cpu" else "")
    del batch

    # ---- a fresh start, or everything last.pth holds -------------------------
    state = LoopState()
    guards = Guards(cfg.guards, plan.type, precision, amp_on=precision.autocast)
    meta = export_meta(cfg, taxonomy, data_config, lake.manifest_hash)
    resume_path = ckpt.resolve_resume(resume, out_dir)
    if resume_path is None and (out_dir / ckpt.LAST).is_file():
        log.warning("⚠️  %s holds an earlier run: its checkpoints will be replaced (--resume auto continues it)",
                    out_dir)
    saved = ckpt.load_checkpoint(resume_path) if resume_path is not None else None
    if saved is not None:
        ckpt.check_resume_compatible(saved, list(taxonomy.classes), lake.manifest_hash, resume_path)
        restore_training_state(saved, cfg, model, optimizer, ema, state, guards)
        if state.step:
            log.info("↩️  Resumed from %s at epoch %d, step %d of %d", resume_path, state.epoch + 1, state.step,
                     loaders.train_batches)
        else:
            log.info("↩️  Resumed from %s after epoch %d", resume_path, state.epoch)
    set_lr(optimizer, scheduler, state.updates, guards.state.lr_factor)
    fwd_model = dist.wrap(torch.compile(model) if cfg.model.compile else model, device)
    tracker.start(cfg, data_config, lake.summary, {  # tracking: a resume reopens the saved MLflow run
        "device": plan.line, "precision": precision.label, "workers": workers,
        "cpu_threads": torch.get_num_threads(), "world_size": dist.world}, saved and saved.get("tracking"))
    if saved is not None:  # last, so the epochs draw the same random numbers as the uninterrupted run
        rng_states, saved_at = saved["rng"], saved.get("saved_at", "?")
        ckpt.restore_rng_state(rng_states[dist.rank] if dist.rank < len(rng_states) else rng_states[0])
        del saved
    else:
        saved_at = None
    timings["setup_seconds"] = time.perf_counter() - started

    # ---- the epochs ------------------------------------------------------------
    loop = _Loop(cfg, taxonomy, lake.sources, dist, device, plan, precision, channels_last, out_dir, meta,
                 model, fwd_model, ema, loss_fn, val_loss_fn, optimizer, scheduler, guards, loaders, state,
                 Hooks.for_run(cfg, tracker, list(taxonomy.classes)))
    if saved_at is not None:
        loop.note_event("resumed", state.epoch + (1 if state.step else 0), state.step,
                        f"from {resume_path.name} saved at {saved_at}")
    loop.tracker = tracker  # tracking
    t = time.perf_counter()
    try:
        with loop.stop.installed():
            loop.run()
    except _Stopped as stop:
        timings["train_seconds"] = time.perf_counter() - t
        raise _interrupted(loop, stop, timings, lake, data_config, workers) from None
    timings["train_seconds"] = time.perf_counter() - t
    if img_cache is not None and dist.is_main:  # its disk use: logged, and in data_summary.json and run.json
        log.info(record_image_cache(out_dir, lake, img_cache))

    # ---- the end: best weights on val and test, report, checklist, run.json ---
    result = loop.finish(timings, started, lake, data_config, workers)
    dist.close()
    return result


def _interrupted(loop: _Loop, stop: _Stopped, timings: dict[str, float], lake: Any, data_config: dict[str, Any],
                 workers: int) -> Interrupted:
    """run.json says where the run stopped and why; the error's message is the line that continues it."""
    where = f"epoch {stop.epoch}, step {stop.step} of {stop.total}" if stop.step else f"the end of epoch {stop.epoch - 1}"
    reason = f"interrupted by {signal_name(stop.signum)} at {where}"
    if loop.dist.is_main:
        run = loop.run_record(timings, lake, data_config, workers, {})
        run.update(status="interrupted", stop_reason=reason)
        RunRecord.from_dict(run).write(loop.out_dir)
    loop.dist.close()
    command = resume_command(sys.argv, loop.dist.world, int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or None)
    return Interrupted(f"Training {reason}; saved in {loop.out_dir / ckpt.LAST}. Continue with: {command}",
                       stop.signum)


# =========================================================================== state


@dataclass
class LoopState:
    """Everything the loop carries from epoch to epoch; `last.pth` holds all of it."""

    epoch: int = 0  # completed epochs
    updates: int = 0  # optimizer steps taken
    micro_steps: int = 0  # batches seen; the step index of the guard injections
    history: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})
    best: dict[str, Any] = field(default_factory=lambda: {"score": None, "epoch": None, "val_acc": None,
                                                          "macro_f1": None, "path": None})
    bad_epochs: int = 0
    early_stopped: bool = False
    stop_reason: str | None = None
    failed: bool = False
    health: list[dict[str, Any]] = field(default_factory=list)
    trend_warnings: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0  # batches of epoch `epoch + 1` already trained (a mid-epoch checkpoint)
    partial: list[dict[str, Any]] | None = None  # each rank's EpochProgress at that step
    events: list[dict[str, Any]] = field(default_factory=list)  # interruptions and resumes, for run.json

    def state_dict(self) -> dict[str, Any]:
        """The loop's part of last.pth (plain types); `load_state_dict` reads back exactly these keys."""
        return {"epoch": self.epoch, "updates": self.updates, "micro_steps": self.micro_steps,
                "early_stopping": {"best": dict(self.best), "bad_epochs": self.bad_epochs, "stopped": self.early_stopped},
                "failed": self.failed, "stop_reason": self.stop_reason,
                "history": {k: list(v) for k, v in self.history.items()}, "health": list(self.health),
                "trend_warnings": list(self.trend_warnings), "step": self.step, "partial": self.partial,
                "events": list(self.events)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue a saved run. A run its guards stopped trains on (`failed` is not restored); an
        early stop stays stopped. Format-1 files (no position in an epoch) resume at the epoch's end."""
        self.epoch, self.updates, self.micro_steps = saved["epoch"], saved["updates"], saved["micro_steps"]
        es = saved["early_stopping"]
        self.best, self.bad_epochs, self.early_stopped = dict(es["best"]), es["bad_epochs"], es["stopped"]
        self.stop_reason = saved["stop_reason"] if self.early_stopped else None
        self.history = {k: list(saved["history"].get(k, [])) for k in HISTORY_KEYS}
        self.health, self.trend_warnings = list(saved["health"]), list(saved["trend_warnings"])
        self.step, self.partial = saved.get("step", 0), saved.get("partial")
        self.events = list(saved.get("events", []))


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


class _Stopped(Exception):
    """A stop signal, after the position was saved; `_train` turns it into `Interrupted`."""

    def __init__(self, signum: int, epoch: int, step: int, total: int) -> None:
        super().__init__(signal_name(signum))
        self.signum, self.epoch, self.step, self.total = signum, epoch, step, total


def is_improvement(score: float | None, best: float | None, monitor: str) -> bool:
    if score is None or not math.isfinite(score):
        return False
    if best is None:
        return True
    return score < best if monitor == "val_loss" else score > best


CONTINUE, DONE, EARLY_STOP, FAILED, CRITICAL = "continue", "done", "early_stop", "failed", "critical"


def decide(state: LoopState, cfg: Config) -> str:
    """What the loop does after an epoch (pure; `_Loop.apply` carries it out): stop for the guards
    (an escalation ran out of rungs, or the epoch was critical), finish, stop early, or go on."""
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


@dataclass
class Hooks:
    """Plain callbacks at the loop's natural points, each list run in order; no framework.

    The debug options (`guards.inject_*`, `guards.debug_kill_after_epoch`) and tracking are
    hooks; a mid-epoch feature adds one here instead of another branch in the loop."""

    loss: list[Callable[[int, torch.Tensor], torch.Tensor]] = field(default_factory=list)  # (micro-step, loss)
    grads: list[Callable[[int, nn.Module], None]] = field(default_factory=list)  # before each guarded update
    step_end: list[Callable[[int, Any, EpochProgress, float], None]] = field(default_factory=list)
    epoch_end: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)  # the history entry
    checkpoint: list[Callable[[int], None]] = field(default_factory=list)  # after an epoch's checkpoints

    @classmethod
    def for_run(cls, cfg: Config, tracker: Tracker, classes: list[str]) -> Hooks:
        hooks = cls()
        inject_loss, inject_grad = set(cfg.guards.inject_nonfinite_loss), set(cfg.guards.inject_nonfinite_grad)
        if inject_loss:  # debug: watch the loss guard work
            hooks.loss.append(lambda step, loss: loss * float("nan") if step in inject_loss else loss)
        if inject_grad:  # debug: watch the gradient guard work
            hooks.grads.append(lambda step, model: _poison_a_gradient(model) if step in inject_grad else None)
        kill_after = cfg.guards.debug_kill_after_epoch
        if kill_after is not None:  # debug: a real crash right after a checkpoint
            hooks.checkpoint.append(lambda epoch: _kill_self() if epoch == kill_after else None)
        hooks.step_end.append(lambda step, images, progress, t_start: tracker.log_step(
            step, images, progress.loss_sum, progress.seen, t_start))
        hooks.epoch_end.append(lambda entry: tracker.log_epoch(entry, classes))
        return hooks


def _poison_a_gradient(model: nn.Module) -> None:
    next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("nan"))


def _kill_self() -> None:
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


# =========================================================================== the loop


class _Loop:
    """The epoch loop. One instance per run; `run()` then `finish()`."""

    tracker: Tracker = Tracker(None, None)  # tracking: a disabled one unless the run sets its own

    def __init__(self, cfg: Config, taxonomy: Taxonomy, sources: list[str], dist: Distributed,
                 device: torch.device, plan: DevicePlan, precision: PrecisionPlan, channels_last: bool,
                 out_dir: Path, meta: dict[str, Any], model: nn.Module, fwd_model: nn.Module, ema: Any,
                 loss_fn: nn.Module, val_loss_fn: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 guards: Guards, loaders: Loaders, state: LoopState, hooks: Hooks | None = None) -> None:
        self.cfg, self.taxonomy, self.sources, self.dist = cfg, taxonomy, sources, dist
        self.device, self.plan, self.precision, self.channels_last = device, plan, precision, channels_last
        self.out_dir, self.meta = out_dir, meta
        self.model, self.fwd_model, self.ema = model, fwd_model, ema
        self.loss_fn, self.val_loss_fn = loss_fn, val_loss_fn
        self.optimizer, self.scheduler, self.guards = optimizer, scheduler, guards
        self.loaders, self.state = loaders, state
        self.stop = StopRequests()  # `_train` installs its signal handlers around `run()`
        self.last_save = time.monotonic()
        self.hooks = hooks or Hooks()

    # ------------------------------------------------------------------ epochs

    def run(self) -> None:
        st, epochs = self.state, self.cfg.train.epochs
        if st.early_stopped:
            log.info("The resumed run had already stopped (%s): nothing left to train", st.stop_reason)
            return
        if st.epoch >= epochs:
            log.info("All %d epochs were already trained: nothing left to train", epochs)
        for epoch in range(st.epoch + 1, epochs + 1):
            t0 = time.perf_counter()
            train_stats = self.train_one_epoch(epoch)
            if train_stats is None:
                log.error("❌ Training stopped: %s. The position (epoch %d, step %d) is saved in last.pth. "
                          "Lower train.lr, set train.amp=off, or check the data; then --resume auto.",
                          st.stop_reason, epoch, st.step)
                break
            val = self.validate()
            seconds = time.perf_counter() - t0
            st.epoch = epoch
            self.record_epoch(epoch, train_stats, val, seconds)
            improved = self.update_best(epoch, val)
            decision = decide(st, self.cfg)
            self.apply(decision, epoch, train_stats)
            signum = self.dist.agree_signal(self.stop.signum)  # a signal during validation stops here
            if signum:
                self.note_event("interrupted", epoch, self.loaders.train_batches, signal_name(signum))
            self.save_epoch_checkpoints(epoch, val, improved)
            for hook in self.hooks.checkpoint:
                hook(epoch)
            if signum and epoch < epochs:
                raise _Stopped(signum, epoch + 1, 0, self.loaders.train_batches)
            if decision != CONTINUE:
                break
        self.dist.barrier()

    def note_event(self, event: str, epoch: int, step: int, reason: str | None) -> None:
        """An interruption or a resume, for run.json: when, where (epoch, step) and why."""
        self.state.events.append({"event": event, "time": _now(), "epoch": epoch, "step": step,
                                  "of": self.loaders.train_batches, "reason": reason})

    def save_position(self, epoch: int, step: int, progress: EpochProgress, reason: str | None) -> None:
        """A mid-epoch last.pth: `step` batches of `epoch` are trained; every rank's sums and RNG go in."""
        st = self.state
        st.step = step
        st.partial = self.dist.gather(progress.state_dict())
        if reason is not None:
            self.note_event("interrupted", epoch, step, reason)
        self.save_last(self.dist.gather_rng())
        if self.dist.is_main:
            log.info("✓ Saved the position: epoch %d, step %d of %d (%s)", epoch, step, self.loaders.train_batches,
                     self.out_dir / ckpt.LAST)

    def save_last(self, rng: list[dict[str, Any]]) -> None:
        """Rank 0 writes last.pth; a signal that arrives meanwhile waits for the write to finish."""
        if self.dist.is_main:
            with self.stop.saving_block():
                ckpt.save_checkpoint(self.out_dir / ckpt.LAST, self.training_state(rng))
        self.last_save = time.monotonic()

    def train_one_epoch(self, epoch: int) -> dict[str, Any] | None:
        """Train epoch `epoch` from batch `state.step` on; None when the guards stopped the run inside it.

        A mid-epoch checkpoint (every `train.checkpoint_every_minutes`, or on a stop signal) is taken
        only between optimizer updates, so no accumulated gradient is ever lost or saved.
        """
        cfg, st = self.cfg.train, self.state
        self.fwd_model.train()
        start, total = st.step, self.loaders.train_batches
        self.loaders.set_epoch(epoch, start)
        progress = EpochProgress.resume(self.device, st.partial, self.dist.rank)
        seen_before, pending = progress.seen, 0  # pending: micro-batches waiting for the next update
        bar = tqdm(itertools.islice(self.loaders.train, total - start), initial=start, total=total,
                   desc=f"Epoch {epoch}/{cfg.epochs}", disable=not self.dist.is_main, dynamic_ncols=True)
        t_start = time.perf_counter()
        for i, batch in enumerate(bar, start):
            boundary = (i + 1) % cfg.accum_steps == 0 or i + 1 == total
            step = self.train_step(epoch, batch, boundary, progress)
            pending += step.trained
            stop = step.guard_stop
            if boundary and pending and not stop:
                stop = self.update(epoch, step.index, pending, progress)
                pending = 0
            for hook in self.hooks.step_end:
                hook(self.state.micro_steps, batch.images, progress, t_start)
            if self.dist.is_main and (i % POSTFIX_EVERY == 0 or i + 1 == total) and progress.seen:
                bar.set_postfix(progress.postfix(), refresh=False)  # the only mid-epoch read-back of the sums
            if stop and i + 1 < total:  # the guards stopped the run inside the epoch: resume at the next step
                bar.close()
                self.save_position(epoch, i + 1, progress, reason="guards")
                return None
            if stop:
                break
            if pending == 0 and i + 1 < total and (step.signum or step.save_due):
                self.save_position(epoch, i + 1, progress, reason=signal_name(step.signum) if step.signum else None)
                if step.signum:
                    bar.close()
                    raise _Stopped(step.signum, epoch, i + 1, total)
        train_time = time.perf_counter() - t_start
        bar.close()
        self.optimizer.zero_grad(set_to_none=True)
        st.step, st.partial = 0, None

        counts = progress.counts
        loss_sum, correct, seen, errors = self.dist.sum(float(progress.loss_sum), int(progress.correct),
                                                        progress.seen, counts["data_errors"])
        counts["data_errors"] = int(errors)
        for k, v in counts.items():
            self.guards.state.totals[k] = self.guards.state.totals.get(k, 0) + v
        return {
            "loss": loss_sum / seen if seen else float("nan"),
            "acc": correct / seen if seen else float("nan"),
            "images_per_second": (progress.seen - seen_before) / train_time if train_time > 0 else 0.0,
            **counts,
        }

    def train_step(self, epoch: int, batch: Any, boundary: bool, progress: EpochProgress) -> StepOutcome:
        """Forward, the loss guard, backward. The running sums stay on the device (no read-back)."""
        st, counts = self.state, progress.counts
        step = st.micro_steps
        st.micro_steps += 1
        counts["steps"] += 1
        counts["data_errors"] += int(batch.failed)
        has_data, finite = len(batch) > 0, None
        sync = boundary or not self.dist.enabled  # DDP: all-reduce gradients only on the update step
        if has_data:
            images = images_on_device(batch, self.device, self.channels_last)
            targets = batch.targets.to(self.device, non_blocking=True)
            with self.autocast(), (contextlib.nullcontext() if sync else self.fwd_model.no_sync()):
                logits = self.fwd_model(images)
                loss = self.loss_fn(logits, targets)
            for hook in self.hooks.loss:
                loss = hook(step, loss)
            finite = torch.isfinite(loss.detach())
        # The one read-back a step needs: backward must never see a non-finite loss. Under DDP the
        # same exchange ANDs the checks over the ranks and ORs a stop signal and a due checkpoint.
        has_data, loss_finite, signum, save_due = self.dist.agree_step(
            has_data, finite, self.stop.signum, self.dist.is_main and self.checkpoint_due())
        outcome = StepOutcome(index=step, signum=signum, save_due=save_due)
        if not has_data:
            counts["skipped"] += 1
            counts["empty_batches"] += 1
        elif not loss_finite:
            counts["skipped"] += 1
            counts["nonfinite_loss"] += 1
            if self.dist.is_main:
                log.warning("⚠️  Non-finite loss at step %d (epoch %d): step skipped", step, epoch)
            outcome.guard_stop = self.on_nonfinite(epoch, step, "loss")
        else:
            with (contextlib.nullcontext() if sync else self.fwd_model.no_sync()):
                self.guards.backward(loss / self.cfg.train.accum_steps)
            progress.add(loss.detach(), targets.gather(1, logits.detach().argmax(dim=1, keepdim=True)) > 0)
            outcome.trained = 1
        return outcome

    def update(self, epoch: int, step: int, pending: int, progress: EpochProgress) -> bool:
        """The optimizer update after `pending` micro-batches; True when the guards stop the run."""
        if self.optimizer_step(step):
            return False
        progress.counts["skipped"] += pending
        progress.counts["nonfinite_grad"] += 1
        if self.dist.is_main:
            log.warning("⚠️  Non-finite gradient norm at step %d (epoch %d): optimizer step skipped", step, epoch)
        return self.on_nonfinite(epoch, step, "grad")

    def checkpoint_due(self) -> bool:
        interval = 60.0 * self.cfg.train.checkpoint_every_minutes
        return interval > 0 and time.monotonic() - self.last_save >= interval

    def optimizer_step(self, step: int) -> bool:
        """The guarded update, then the schedule and EMA. False when the step was skipped."""
        st = self.state
        for hook in self.hooks.grads:
            hook(step, self.model)
        if not self.guards.optimizer_step(self.model, self.optimizer, self.cfg.train.grad_clip):
            return False
        st.updates += 1
        set_lr(self.optimizer, self.scheduler, st.updates, self.guards.state.lr_factor)
        if self.ema is not None:
            self.ema.update(self.model, step=st.updates)
        return True

    def on_nonfinite(self, epoch: int, step: int, kind: str) -> bool:
        """Count a non-finite step towards escalation; True when the run must stop now."""
        event = self.guards.on_nonfinite(epoch, step, kind)
        if event is None:
            return False
        if event["action"] == "lr_halved":
            set_lr(self.optimizer, self.scheduler, self.state.updates, self.guards.state.lr_factor)
        elif event["action"] == "stop":
            self.state.failed = True
            self.state.stop_reason = f"{event['after']} at step {step} (epoch {epoch}) after escalating (AMP off, LR halved)"
        return event["action"] == "stop"

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.plan.type, self.precision, enabled=self.guards.state.amp_on)

    def autocast_factory(self):
        if not self.guards.state.amp_on:
            return None
        return functools.partial(torch.autocast, self.plan.type, dtype=getattr(torch, self.precision.dtype))

    # ------------------------------------------------------------------ validation

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def validate(self) -> dict[str, Any]:
        # scikit-learn (metrics, evaluate, report) takes ≈ 2 s to import: it loads when the first epoch
        # is scored, so a run that fails its config, data or sanity checks fails fast.
        from .evaluate import collect_predictions
        from .metrics import epoch_metrics

        preds = collect_predictions(self.eval_model(), self.loaders.val, self.device, self.autocast_factory(),
                                    desc="Validation", progress=self.dist.is_main)
        logits, targets, source_ids = self.dist.gather_predictions(preds)
        m = epoch_metrics(logits.softmax(dim=1), targets, self.taxonomy, source_ids, self.sources)
        m["loss"] = float(self.val_loss_fn(logits, targets)) if len(logits) else float("nan")
        m["samples"] = int(len(logits))
        (m["failed"],) = self.dist.sum(preds.failed)
        if m["failed"] and self.dist.is_main:
            log.warning("⚠️  %d validation images could not be loaded and were left out", m["failed"])
        return m

    # ------------------------------------------------------------------ records

    def record_epoch(self, epoch: int, tr: dict[str, Any], val: dict[str, Any], seconds: float) -> None:
        st = self.state
        skipped_pct = 100.0 * tr["skipped"] / max(1, tr["steps"])
        verdict = self.guards.verdict(skipped_pct)
        entry = {
            "epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": val["loss"],
            "val_acc": val["acc"], "val_macro_f1": val["macro_f1"], "val_set_acc": val.get("set_acc"),
            "val_samples": val["samples"], "lr": current_lr(self.optimizer), "skipped": skipped_pct / 100.0,
            "health": verdict, "epoch_seconds": seconds, "images_per_second": tr["images_per_second"],
            "per_class_f1": [float(f) for f in val["per_class_f1"]],
        }
        for key in HISTORY_KEYS:
            st.history[key].append(finite_or_none(entry[key]))
        st.health.append({"epoch": epoch, "verdict": verdict, "skipped_pct": round(skipped_pct, 3),
                          **{k: tr[k] for k in ("steps", "skipped", "nonfinite_loss", "nonfinite_grad", "data_errors",
                                                "empty_batches")},
                          "val_data_errors": int(val["failed"])})

        if not self.dist.is_main:
            return
        History.from_dict(st.history).write(self.out_dir)
        for hook in self.hooks.epoch_end:
            hook(entry)
        from .metrics import format_per_class  # loaded by validate() already (see there)

        for line in format_per_class(val, self.taxonomy):
            log.info(line)
        log.info("Epoch %d/%d: Train Acc %.2f%%, Val Loss %.4f, Val Acc %.2f%%, Macro F1 %.4f", epoch,
                 self.cfg.train.epochs, 100 * tr["acc"], val["loss"], 100 * val["acc"], val["macro_f1"])
        health = (f"Health: {verdict} ({skipped_pct:.1f}% of {tr['steps']} steps skipped: "
                  f"{tr['nonfinite_loss']} non-finite loss, {tr['nonfinite_grad']} non-finite grad, "
                  f"{tr['data_errors']} data errors)")
        if verdict == "healthy":
            log.info("  %s", health)
        else:
            log.warning("⚠️  %s", health)
        printed = {w["id"] for w in st.trend_warnings}
        for warning in trends.trend_warnings(st.history):
            if warning["id"] not in printed:
                st.trend_warnings.append(warning)
                log.warning(trends.format_trend_warning(warning))

    def update_best(self, epoch: int, val: dict[str, Any]) -> bool:
        """Did the monitored score improve? Keeps the best score and counts the epochs without gain."""
        st, monitor = self.state, self.cfg.train.monitor
        score = {"val_macro_f1": val["macro_f1"], "val_acc": val["acc"], "val_loss": val["loss"]}[monitor]
        improved = is_improvement(score, st.best["score"], monitor)
        if improved:
            st.best.update(score=score, epoch=epoch, val_acc=val["acc"], macro_f1=val["macro_f1"])
            st.bad_epochs = 0
        else:
            st.bad_epochs += 1
        return improved

    def apply(self, decision: str, epoch: int, tr: dict[str, Any]) -> None:
        """Record a stop in the state (last.pth, run.json) and say why; before the epoch's checkpoints."""
        st = self.state
        if decision == FAILED:
            log.error("❌ Training stopped: %s. The checkpoint of epoch %d is saved (last.pth). "
                      "Lower train.lr, set train.amp=off, or check the data; then --resume auto.", st.stop_reason, epoch)
        elif decision == CRITICAL:
            st.failed = True
            st.stop_reason = (f"{st.health[-1]['skipped_pct']:.1f}% of the steps of epoch {epoch} were skipped "
                              f"(critical above {self.cfg.guards.critical_pct:g}%)")
            log.error("❌ Training stopped: %s (%d non-finite loss, %d non-finite grad, %d empty batches). "
                      "The checkpoint of epoch %d is saved (last.pth). Frequent NaN/Inf usually means the learning "
                      "rate is too high or fp16 overflows: lower train.lr or set train.amp=off, then --resume auto.",
                      st.stop_reason, tr["nonfinite_loss"], tr["nonfinite_grad"], tr["empty_batches"], epoch)
        elif decision == EARLY_STOP:  # recorded before the save, so a resume does not train on
            patience = self.cfg.train.early_stopping_patience
            st.early_stopped = True
            st.stop_reason = (f"early stopping: no gain in {self.cfg.train.monitor} for {patience} epochs "
                              f"(best at epoch {st.best['epoch']})")
            log.info("⏹️  Early stopping: no gain in %s for %d epochs (best %.4f at epoch %d)",
                     self.cfg.train.monitor, patience, st.best["score"], st.best["epoch"])

    def save_epoch_checkpoints(self, epoch: int, val: dict[str, Any], improved: bool) -> None:
        """The best weights when they improved, then last.pth; every rank takes part."""
        st = self.state
        rng = self.dist.gather_rng()  # a collective: every rank takes part
        if self.dist.is_main and improved:
            meta = {**self.meta, "epoch": epoch, "val_acc": val["acc"], "val_macro_f1": val["macro_f1"]}
            path = ckpt.save_best(self.out_dir, ckpt.state_dict_copy(self.eval_model()), meta)
            st.best["path"] = path.name
            log.info("✓ Saved best model checkpoint: %s", path)
        self.save_last(rng)
        self.dist.barrier()

    def training_state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        """The `last.pth` payload: everything an exact resume needs (tensors and plain types)."""
        # No scheduler state: the LR is a pure function of the config and `updates` (set_lr).
        return {
            "format": ckpt.FORMAT_VERSION,
            "kind": "last",
            "classes": list(self.taxonomy.classes),
            "manifest_hash": self.meta["manifest_hash"],
            "meta": dict(self.meta),
            "config": self.cfg.to_dict(),
            **self.state.state_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "guard": self.guards.state_dict(),
            "scaler": self.guards.scaler.state_dict(),
            "rng": rng,
            "saved_at": _now(),
            "tracking": self.tracker.state(),  # tracking: a resumed run appends to the same MLflow run and step
        }

    # ------------------------------------------------------------------ the end

    def finish(self, timings: dict[str, float], started: float, lake: Any, data_config: dict[str, Any],
               workers: int) -> RunResult:
        st, out = self.state, self.out_dir
        best_path = out / st.best["path"] if st.best["path"] else None
        result = RunResult(ok=not st.failed, output_dir=out, epochs_completed=st.epoch, history=st.history,
                           best_checkpoint=best_path, best_epoch=st.best["epoch"], best_val_acc=st.best["val_acc"],
                           best_macro_f1=st.best["macro_f1"], stop_reason=st.stop_reason)
        if not self.dist.is_main:
            return result

        final: dict[str, Any] = {}
        t = time.perf_counter()
        if not st.failed and best_path is not None:
            log.info("📊 Final evaluation of the best weights (epoch %s)", st.best["epoch"])
            from .evaluate import write_final_evaluation  # loaded by validate() already

            reports = write_final_evaluation(self.eval_model(), self.loaders.final, self.taxonomy,
                                             self.sources, out, self.device, self.autocast_factory(),
                                             checkpoint=out)
            final = {split: {k: r.get(k) for k in ("accuracy", "macro_f1", "n_fine", "n_set", "set_accuracy")}
                     for split, r in reports.items()}
        timings["final_evaluation_seconds"] = time.perf_counter() - t
        timings["total_seconds"] = time.perf_counter() - started

        # The checklist needs only the checkpoints and the history, so it is ready before the
        # report, which then shows it.
        checklist = trends.success_checklist(
            st.history,
            {"completed": not st.failed, "stop_reason": st.stop_reason, "artifacts": trends.artifacts_present(out),
             "skipped_steps": self.guards.state.totals["skipped"], "total_steps": self.guards.state.totals["steps"]},
            skipped_max=self.cfg.guards.warn_pct / 100.0,
        )
        for line in trends.format_checklist(checklist):
            log.info(line)
        run = self.run_record(timings, lake, data_config, workers, final)
        run.update(checklist=checklist, report_error=None)
        RunRecord.from_dict(run).write(out)  # the report reads it
        if not st.failed:
            from .report import build_report  # with scikit-learn (see validate)

            try:
                log.info("✓ Report written: %s", build_report(out))
            except Exception as exc:  # a plotting problem must not hide a finished training; it is reported
                run["report_error"] = f"{type(exc).__name__}: {exc}"
                log.warning("⚠️  Report not built: %s (rebuild it with `sustain report %s`)", run["report_error"], out)
                RunRecord.from_dict(run).write(out)
        tracked = self.tracker.finish(out, run)  # tracking: final metrics and artifacts; its counts go into run.json
        if tracked is not None:
            run["tracking"] = tracked
            RunRecord.from_dict(run).write(out)
        result.checklist = checklist
        if st.failed:
            log.error("❌ Training failed: %s", st.stop_reason)
        else:
            log.info("✓ Training completed successfully")
        return result

    def run_record(self, timings: dict[str, float], lake: Any, data_config: dict[str, Any], workers: int,
                   final: dict[str, Any]) -> dict[str, Any]:
        st = self.state
        return {
            "status": "failed" if st.failed else "completed",
            "stop_reason": st.stop_reason,
            "config": self.cfg.to_dict(),
            "model_name": self.cfg.model.name,
            "classes": list(self.taxonomy.classes),
            "taxonomy": self.taxonomy.to_dict(),
            "normalisation": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
            "device": {"type": self.plan.type, "name": self.plan.name, "precision": self.precision.label,
                       "amp_on_at_end": self.guards.state.amp_on, "channels_last": self.channels_last,
                       "world_size": self.dist.world, "num_workers": workers},
            "seed": self.cfg.seed,
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "timm": timm.__version__, "numpy": np.__version__},
            "manifest_hash": lake.manifest_hash,
            "data_summary": lake.summary,
            "epochs_completed": st.epoch,
            "best": {**st.best},
            "final_evaluation": final,
            "health": {"totals": dict(self.guards.state.totals), "escalations": list(self.guards.state.escalations),
                       "per_epoch": list(st.health), "trend_warnings": list(st.trend_warnings)},
            "interruptions": list(st.events),
        }


# =========================================================================== building blocks


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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _ensure_console_logging() -> None:
    """Plain messages on stdout when nobody configured logging (Python API, notebooks)."""
    if not (logging.getLogger("sustain").handlers or logging.getLogger().handlers):
        setup_logging()

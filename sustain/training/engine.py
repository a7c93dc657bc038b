"""The training run (SPEC §6, §7): `train(cfg, resume=None) -> RunResult`.

Read `_train` top to bottom: it is the run. Setup prints the startup sequence
(seed, device, model, transform validation, data summary, sanity check) and
builds one frozen `Run`; `loop.run_epochs` trains with the step guards,
validates, writes the metrics history and the checkpoints; the end evaluates
the best weights, prints the Success Criteria Checklist, writes `run.json` and
builds the report.

Under `torchrun` the same loop runs DDP (gloo on CPU, NCCL on CUDA); only
rank 0 prints, shows bars and writes files, and validation gathers every
rank's predictions so each sample counts exactly once.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torchvision
from torch import nn

from ..artifacts import LAST, RunRecord, prepare_output_dir
from ..config import Config
from ..data import check_sources, image_cache, record_image_cache
from ..device import (
    apply_backend_flags,
    detect_backends,
    in_jupyter,
    plan_channels_last,
    plan_device,
    plan_num_workers,
    plan_precision,
    resumed_precision,
    wants_bf16_probe,
)
from ..evaluate import trends
from ..model import build_model, load_checkpoint, parameter_summary
from ..taxonomy import Taxonomy, build_taxonomy
from ..tracking import Tracker
from ..transforms import (
    build_eval_transform,
    build_train_transform,
    resolve_data_config,
    validate_transforms,
)
from ..utils import cpu_count
from . import console
from .checkpoints import export_meta, record_calibration
from .cpu_plan import plan_cpu_measured
from .distributed import Distributed
from .guards import Guards
from .hooks import Hooks, RunStart
from .interrupts import Interrupted, StopRequests, resume_command, signal_name
from .loaders import build_loaders
from .loop import Stopped, run_epochs
from .loop_state import LoopState
from .losses import PartialLabelLoss, build_train_loss
from .optim import build_ema, build_optimizer, build_scheduler, set_lr
from .precision import images_on_device, probe_precision, probe_record
from .resume import check_resume_compatible, resolve_resume, restore_training_state
from .rng import restore_rng_state, seed_everything
from .sanity import sanity_check
from .trainer import CheckpointClock, Trainer

log = logging.getLogger("sustain.training.engine")


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


@dataclass
class _Setup:
    """What setup found out beyond the `Run` itself, for run.json and the resume."""

    lake: Any
    data_config: dict[str, Any]
    workers: int
    img_cache: Any
    timings: dict[str, float]


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
    console.ensure_console_logging()
    started = time.perf_counter()
    dist = Distributed.from_env()
    if not dist.is_main:
        logging.getLogger("sustain").setLevel(logging.WARNING)
    out_dir = prepare_output_dir(cfg.output_dir)  # before anything slow: fail early
    taxonomy = build_taxonomy(**cfg.taxonomy.model_dump())
    check_sources(cfg, taxonomy)  # likewise: a missing dataset must not wait for a model download

    trainer, setup = _setup(cfg, dist, taxonomy, out_dir, tracker)
    state = LoopState()
    resume_path, saved = _load_resume(trainer, state, resume)
    set_lr(trainer.optimizer, trainer.scheduler, state.updates, trainer.guards.state.lr_factor)
    trainer.fwd_model = dist.wrap(torch.compile(trainer.model) if cfg.model.compile else trainer.model, trainer.device)
    facts = RunStart(cfg, setup.data_config, setup.lake.summary, {
        "device": trainer.plan.line, "precision": trainer.precision.label, **probe_record(trainer.precision),
        "workers": setup.workers,
        "cpu_threads": torch.get_num_threads(), "world_size": dist.world}, saved or {})
    for hook in trainer.hooks.run_start:
        hook(facts)
    if saved is not None:  # last, so the epochs draw the same random numbers as the uninterrupted run
        rng_states = saved["rng"]
        restore_rng_state(rng_states[dist.rank] if dist.rank < len(rng_states) else rng_states[0])
        state.note_event("resumed", state.epoch + (1 if state.step else 0), state.step, trainer.loaders.train_batches,
                         f"from {resume_path.name} saved at {saved.get('saved_at', '?')}")
        del saved
    setup.timings["setup_seconds"] = time.perf_counter() - started

    state.start_segment()
    try:
        with trainer.stop.installed():
            run_epochs(trainer, state)
    except Stopped as stop:
        state.end_segment()
        setup.timings["train_seconds"] = state.train_seconds()  # every start's, not only this one's
        raise _interrupted(trainer, state, setup, stop) from None
    state.end_segment()
    setup.timings["train_seconds"] = state.train_seconds()
    if setup.img_cache is not None and dist.is_main:  # its disk use: logged, and in data_summary.json and run.json
        log.info(record_image_cache(out_dir, setup.lake, setup.img_cache))

    result = _finish(trainer, state, setup, started)
    dist.close()
    return result


# =========================================================================== setup


def _setup(cfg: Config, dist: Distributed, taxonomy: Taxonomy, out_dir: Path, tracker: Tracker) -> tuple[Trainer, _Setup]:
    """Seed, device, model, transforms, data, loss, optimizer, the sanity check and the CPU plan."""
    seed_everything(cfg.seed + dist.rank)  # ranks differ in augmentation, DDP syncs the weights
    log.info("✓ Random seed set to %d", cfg.seed)
    backends = detect_backends()
    plan = plan_device(cfg.device, backends)
    apply_backend_flags(plan)
    precision = plan_precision(plan.type, cfg.train.amp, backends.cuda_bf16, cpu_bf16=backends.cpu_bf16)
    device = dist.init(plan)
    log.info("%s%s", plan.line, f", DDP world size {dist.world}" if dist.enabled else "")
    probing = wants_bf16_probe(plan.type, cfg.train.amp, backends.cpu_bf16)
    if not probing:
        log.info(precision.line)

    model, data_config, train_tf, eval_tf = _model_and_transforms(cfg, taxonomy, plan.type)
    size = data_config["input_size"][-1]

    img_cache = image_cache.for_config(cfg.data, size, data_config["crop_pct"])  # None: data.image_cache off
    t = time.perf_counter()
    lake = dist.ingest(cfg, taxonomy, out_dir, img_cache)  # decodes each new file once: signature and cache
    timings = {"ingest_seconds": time.perf_counter() - t}
    workers = plan_num_workers(cfg.data.num_workers, plan.type, cpu_count=cpu_count(), in_jupyter=in_jupyter(),
                               platform=sys.platform, world_size=dist.world)
    loaders = build_loaders(cfg, lake, taxonomy, train_tf, eval_tf, plan, workers, dist, img_cache)

    channels_last = plan_channels_last(cfg.model.channels_last, plan.type,
                                       sum(isinstance(m, nn.Conv2d) for m in model.modules()), backends.cpu_isa)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    loss_fn = build_train_loss(cfg.train, lake, taxonomy).to(device)
    optimizer = build_optimizer(cfg.train, model)
    scheduler = build_scheduler(cfg.train, optimizer, math.ceil(loaders.train_batches / cfg.train.accum_steps))
    ema = build_ema(cfg.train, model)
    filled = img_cache.filled if img_cache is not None else 0
    t = time.perf_counter()
    batch = loaders.sanity_batch()
    load_seconds = time.perf_counter() - t
    if plan.type == "cpu" and img_cache is not None and img_cache.filled > filled:  # that load filled entries
        # (files ingestion did not decode): the plan times a load from them, as the epochs will read
        t = time.perf_counter()
        batch = loaders.sanity_batch()
        load_seconds = time.perf_counter() - t
    sanity_check(model, batch, loss_fn, device, precision, taxonomy.num_classes, size, channels_last)
    if probing:  # amp: auto on a CPU with native bf16: bf16 only where the probe finds it as accurate and faster
        precision = probe_precision(cfg, backends, model, images_on_device(batch, device, channels_last),
                                    batch.targets.to(device), loss_fn, size)
    if plan.type == "cpu":  # measured CPU plan (docs/performance.md); loaders start no worker until iterated
        cpu = plan_cpu_measured(cfg.data.num_workers, model, batch, loss_fn, device, precision, load_seconds, channels_last, dist.world)
        if cpu.workers != workers:
            workers = cpu.workers
            loaders = build_loaders(cfg, lake, taxonomy, train_tf, eval_tf, plan, workers, dist, img_cache)
    log.info("  DataLoader workers: %d%s", workers,
             f", CPU threads: {torch.get_num_threads()}" if plan.type == "cpu" else "")
    del batch

    hooks = Hooks.for_run(cfg)
    hooks.attach_tracker(tracker, list(taxonomy.classes))
    trainer = Trainer(cfg=cfg, taxonomy=taxonomy, sources=lake.sources, dist=dist, device=device, plan=plan,
              precision=precision, channels_last=channels_last, out_dir=out_dir,
              meta=export_meta(cfg.model, taxonomy, data_config, lake.manifest_hash), model=model,
              fwd_model=model,  # compiled and wrapped for DDP after a resume loaded the weights
              ema=ema, loss_fn=loss_fn,
              val_loss_fn=PartialLabelLoss(),  # validation loss is the plain NLL: no smoothing, no weights
              optimizer=optimizer, scheduler=scheduler,
              guards=Guards(cfg.guards, plan.type, precision, amp_on=precision.autocast), loaders=loaders,
              hooks=hooks, stop=StopRequests(),
              clock=CheckpointClock(cfg.train.checkpoint_every_minutes))
    return trainer, _Setup(lake, data_config, workers, img_cache, timings)


def _model_and_transforms(cfg: Config, taxonomy: Taxonomy, device_type: str) -> tuple[nn.Module, dict[str, Any],
                                                                                   Any, Any]:
    log.info("Creating model: %s", cfg.model.name)
    model = build_model(cfg.model, taxonomy.num_classes, device_type)
    log.info(parameter_summary(model))
    data_config = resolve_data_config(model, cfg.model)
    train_tf, eval_tf = build_train_transform(data_config, cfg.data), build_eval_transform(data_config)
    validate_transforms(train_tf, eval_tf, data_config["input_size"][-1])
    return model, data_config, train_tf, eval_tf


def _load_resume(trainer: Trainer, state: LoopState, resume: str | None) -> tuple[Path | None, dict[str, Any] | None]:
    """A fresh start, or everything last.pth holds loaded into `run`'s objects and `state`."""
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


# =========================================================================== the end


def _interrupted(trainer: Trainer, state: LoopState, setup: _Setup, stop: Stopped) -> Interrupted:
    """run.json says where the run stopped and why; the error's message is the line that continues it."""
    where = f"epoch {stop.epoch}, step {stop.step} of {stop.total}" if stop.step else f"the end of epoch {stop.epoch - 1}"
    reason = f"interrupted by {signal_name(stop.signum)} at {where}"
    if trainer.dist.is_main:
        record = _run_record(trainer, state, setup, {})
        record.update(status="interrupted", stop_reason=reason, **{k: f() for k, f in trainer.hooks.stopped.items()})
        RunRecord.from_dict(record).write(trainer.out_dir)
    for hook in trainer.hooks.interrupt:
        hook(reason)
    trainer.dist.close()
    command = resume_command(sys.argv, trainer.dist.world, int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or None)
    return Interrupted(f"Training {reason}; saved in {trainer.out_dir / LAST}. Continue with: {command}",
                       stop.signum)


def _finish(trainer: Trainer, state: LoopState, setup: _Setup, started: float) -> RunResult:
    """The best weights on val and test, the checklist, run.json, the report and tracking's last word."""
    out = trainer.out_dir
    best_path = out / state.best.path if state.best.path else None
    result = RunResult(ok=not state.failed, output_dir=out, epochs_completed=state.epoch, history=state.history.to_dict(),
                       best_checkpoint=best_path, best_epoch=state.best.epoch, best_val_acc=state.best.val_acc,
                       best_macro_f1=state.best.macro_f1, stop_reason=state.stop_reason)
    if not trainer.dist.is_main:
        return result
    t = time.perf_counter()
    final = _final_evaluation(trainer, state) if not state.failed and best_path is not None else {}
    setup.timings["final_evaluation_seconds"] = time.perf_counter() - t
    setup.timings["total_seconds"] = time.perf_counter() - started

    # The checklist needs only the checkpoints and the history, so it is ready before the
    # report, which then shows it.
    totals = trainer.guards.state.totals
    checklist = trends.success_checklist(
        state.history.to_dict(),
        {"completed": not state.failed, "stop_reason": state.stop_reason, "artifacts": trends.artifacts_present(out),
         "skipped_steps": totals["skipped"], "total_steps": totals["steps"]},
        skipped_max=trainer.cfg.guards.warn_pct / 100.0,
    )
    for line in trends.format_checklist(checklist):
        log.info(line)
    calibration = final.pop("calibration", None)  # its own key in run.json
    record = _run_record(trainer, state, setup, final)
    record.update(checklist=checklist, report_error=None, calibration=calibration)
    RunRecord.from_dict(record).write(out)  # the report reads it
    if not state.failed:
        from ..report import build_report

        t = time.perf_counter()
        try:
            log.info("✓ Report written: %s", build_report(out))
        except Exception as exc:  # a plotting problem must not hide a finished training; it is reported
            record["report_error"] = f"{type(exc).__name__}: {exc}"
            log.warning("⚠️  Report not built: %s (rebuild it with `sustain report %s`)", record["report_error"], out)
        record["timings"]["report_seconds"] = round(time.perf_counter() - t, 3)  # after total_seconds: its own line
        RunRecord.from_dict(record).write(out)
    extra: dict[str, Any] = {}
    for hook in trainer.hooks.run_end:  # tracking: final metrics and artifacts; its counts go into run.json
        extra.update(hook(out, record))
    if extra:
        record.update(extra)
        RunRecord.from_dict(record).write(out)
    result.checklist = checklist
    console.run_ended(state)
    return result


def _final_evaluation(trainer: Trainer, state: LoopState) -> dict[str, Any]:
    log.info("📊 Final evaluation of the best weights (epoch %s)", state.best.epoch)
    from ..evaluate import write_final_evaluation  # loaded by loop.validate() already

    settings = {"temperature": trainer.cfg.calibration.temperature,
                "accept_accuracy": trainer.cfg.eval.accept_accuracy}
    reports = write_final_evaluation(trainer.eval_model(), trainer.loaders.final, trainer.taxonomy, trainer.sources,
                                     trainer.out_dir, trainer.device, trainer.autocast_factory(),
                                     checkpoint=trainer.out_dir, calibration=settings)
    final = {split: {k: r.get(k) for k in ("accuracy", "macro_f1", "n_fine", "n_set", "set_accuracy",
                                            "expected_calibration_error", "expected_calibration_error_uncalibrated")}
             for split, r in reports.items()}
    chosen = next((r["calibration"] for r in reports.values() if "calibration" in r), None)
    if chosen is not None:  # predict, evaluate and export read T and the threshold from best_model.json
        record_calibration(trainer.out_dir, chosen)
        final["calibration"] = {**chosen, "accept_or_review": {s: r.get("accept_or_review") for s, r in reports.items()}}
    return final


def _run_record(trainer: Trainer, state: LoopState, setup: _Setup, final: dict[str, Any]) -> dict[str, Any]:
    guard = trainer.guards.state
    return {
        "status": "failed" if state.failed else "completed",
        "stop_reason": state.stop_reason,
        "config": trainer.cfg.to_dict(),
        "model_name": trainer.cfg.model.name,
        "classes": list(trainer.taxonomy.classes),
        "taxonomy": trainer.taxonomy.to_dict(),
        "normalisation": {k: list(v) if isinstance(v, tuple) else v for k, v in setup.data_config.items()},
        "device": {"type": trainer.plan.type, "name": trainer.plan.name, "precision": trainer.precision.label,
                   "precision_plan": trainer.precision.record(),
                   "amp_on_at_end": guard.amp_on, "channels_last": trainer.channels_last,
                   "world_size": trainer.dist.world, "num_workers": setup.workers},
        "seed": trainer.cfg.seed,
        "timings": {k: round(v, 3) for k, v in setup.timings.items()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "timm": timm.__version__, "numpy": np.__version__},
        "manifest_hash": setup.lake.manifest_hash,
        "data_summary": setup.lake.summary,
        "epochs_completed": state.epoch,
        "best": state.best.to_dict(),
        "final_evaluation": final,
        "health": {"totals": dict(guard.totals), "escalations": list(guard.escalations),
                   "per_epoch": list(state.health), "trend_warnings": list(state.trend_warnings)},
        "interruptions": list(state.events),
        "segments": state.all_segments(),
        "local_paths": _local_paths(trainer),
    }


def _local_paths(trainer: Trainer) -> dict[str, Any]:
    """run.json's only absolute paths: where this machine keeps the run and its data (to resume here)."""
    cfg = trainer.cfg
    return {"run_dir": str(trainer.out_dir.resolve()), "data_root": str(Path(cfg.data.root).expanduser().resolve()),
            "sources": {s.name: str(cfg.source_root(s).resolve()) for s in cfg.data.sources
                        if s.name in trainer.sources}}

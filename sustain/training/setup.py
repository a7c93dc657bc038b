"""Setup (SPEC §6): everything a training run builds once, in the order the startup sequence prints it.

Seed, device, model and transforms (validated), the data (ingested, loaders),
loss, optimizer, schedule and EMA, the sanity check, the precision probe and
the measured CPU plan, then the hooks (the debug options, tracking, the
console). The result is one `Trainer` for the loop and a `Setup` of what the
run's records need besides.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..data import image_cache
from ..device import (
    DevicePlan,
    PrecisionPlan,
    apply_backend_flags,
    detect_backends,
    in_jupyter,
    plan_channels_last,
    plan_device,
    plan_num_workers,
    plan_precision,
    probed_step_seconds,
    wants_bf16_probe,
)
from ..model import build_model, parameter_summary
from ..taxonomy import Taxonomy
from ..tracking import Tracker
from ..transforms import (
    build_eval_transform,
    build_train_transform,
    resolve_data_config,
    validate_transforms,
)
from ..utils import cpu_count
from .checkpoints import export_meta
from .cpu_plan import plan_cpu_measured
from .distributed import Distributed
from .guards import Guards
from .hooks import Hooks
from .interrupts import StopRequests
from .loaders import build_loaders
from .losses import PartialLabelLoss, build_train_loss
from .optim import build_ema, build_optimizer, build_scheduler
from .precision import images_on_device, probe_precision
from .rng import seed_everything
from .sanity import sanity_check
from .trainer import CheckpointClock, Trainer

log = logging.getLogger("sustain.training.engine")


@dataclass
class Setup:
    """What setup found out beyond the `Trainer` itself, for run.json, tracking and the resume."""

    lake: Any
    data_config: dict[str, Any]
    workers: int
    img_cache: Any
    timings: dict[str, float]


@dataclass(frozen=True)
class _Device:
    """The device and precision plans (before the probe) and the device this rank trains on."""

    backends: Any
    plan: DevicePlan
    precision: PrecisionPlan
    device: torch.device
    probing: bool  # amp: auto on a CPU with native bf16: the probe decides after the sanity check


def build_trainer(cfg: Config, dist: Distributed, taxonomy: Taxonomy, out_dir: Path,
                  tracker: Tracker) -> tuple[Trainer, Setup]:
    """Seed, device, model, transforms, data, loss, optimizer, the sanity check and the CPU plan."""
    dev = _device(cfg, dist)
    plan, device = dev.plan, dev.device
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
                                       sum(isinstance(m, nn.Conv2d) for m in model.modules()), dev.backends.cpu_isa)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    loss_fn = build_train_loss(cfg.train, lake, taxonomy).to(device)
    optimizer = build_optimizer(cfg.train, model)
    scheduler = build_scheduler(cfg.train, optimizer, math.ceil(loaders.train_batches / cfg.train.accum_steps))
    ema = build_ema(cfg.train, model)
    precision, cpu_workers = _checked_and_measured(cfg, dev, model, loss_fn, loaders, img_cache, size, channels_last,
                                                   taxonomy.num_classes, dist.world)
    if cpu_workers is not None and cpu_workers != workers:
        workers = cpu_workers
        loaders = build_loaders(cfg, lake, taxonomy, train_tf, eval_tf, plan, workers, dist, img_cache)
    log.info("  DataLoader workers: %d%s", workers,
             f", CPU threads: {torch.get_num_threads()}" if plan.type == "cpu" else "")

    hooks = Hooks.for_run(cfg)
    hooks.attach_tracker(tracker, list(taxonomy.classes))
    hooks.attach_console(cfg.train, taxonomy)  # after tracking: an epoch is logged, then printed
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
    return trainer, Setup(lake, data_config, workers, img_cache, timings)


def _device(cfg: Config, dist: Distributed) -> _Device:
    """The seed, then the device and precision plans (printed), and this rank's device."""
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
    return _Device(backends, plan, precision, device, probing)


def _checked_and_measured(cfg: Config, dev: _Device, model: nn.Module, loss_fn: nn.Module, loaders: Any,
                          img_cache: Any, size: int, channels_last: bool, num_classes: int,
                          world: int) -> tuple[PrecisionPlan, int | None]:
    """The sanity check on one batch, the bf16 probe (amp: auto on a bf16 CPU) and the measured CPU plan's
    loader workers (None off the CPU); loaders start no worker until iterated."""
    device, precision = dev.device, dev.precision
    filled = img_cache.filled if img_cache is not None else 0
    t = time.perf_counter()
    batch = loaders.sanity_batch()
    load_seconds = time.perf_counter() - t
    if dev.plan.type == "cpu" and img_cache is not None and img_cache.filled > filled:  # that load filled entries
        # (files ingestion did not decode): the plan times a load from them, as the epochs will read
        t = time.perf_counter()
        batch = loaders.sanity_batch()
        load_seconds = time.perf_counter() - t
    sanity_check(model, batch, loss_fn, device, precision, num_classes, size, channels_last)
    if dev.probing:  # bf16 only where the probe finds it as accurate and faster
        precision = probe_precision(cfg, dev.backends, model, images_on_device(batch, device, channels_last),
                                    batch.targets.to(device), loss_fn, size)
    if dev.plan.type != "cpu":
        return precision, None
    cpu = plan_cpu_measured(cfg.data.num_workers, model, batch, loss_fn, device, precision, load_seconds,  # docs/performance.md
                            channels_last, world, step_seconds=probed_step_seconds(precision))
    return precision, cpu.workers


def _model_and_transforms(cfg: Config, taxonomy: Taxonomy, device_type: str) -> tuple[nn.Module, dict[str, Any],
                                                                                   Any, Any]:
    log.info("Creating model: %s", cfg.model.name)
    model = build_model(cfg.model, taxonomy.num_classes, device_type)
    log.info(parameter_summary(model))
    data_config = resolve_data_config(model, cfg.model)
    train_tf, eval_tf = build_train_transform(data_config, cfg.data), build_eval_transform(data_config)
    validate_transforms(train_tf, eval_tf, data_config["input_size"][-1])
    return model, data_config, train_tf, eval_tf

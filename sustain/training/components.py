"""What setup builds and checks for a training run, as small factories with explicit inputs.

The optimizer (timm's factory), the warmup + cosine schedule and the LR as a
function of the update count, the EMA, the training loss, the `best_model.json`
fields, the output folder check, the pre-training sanity check, and the CPU plan
measured on the sanity batch. The engine calls them in `_train`'s setup; the
benchmarks call them to time the bare step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..device import CpuPlan, PrecisionPlan, plan_cpu
from ..errors import RunFailed, UsageError
from ..model import model_kwargs
from ..taxonomy import Taxonomy
from ..utils import cpu_count
from .losses import PartialLabelLoss, class_counts, inverse_frequency_weights

log = logging.getLogger("sustain.training.engine")  # the start-up sequence the engine prints, in its voice


def prepare_output_dir(path: str | Path) -> Path:
    """Create the output folder and prove it is writable, before anything slow happens."""
    out = Path(path).expanduser()
    hint = "choose another folder with --output DIR (or output_dir in the config), or fix its permissions"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test_{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"Output folder {out} is not writable: {exc.strerror or exc}", hint) from None
    return out.resolve()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA / MPS device


def export_meta(cfg: Config, taxonomy: Taxonomy, data_config: dict[str, Any], manifest_hash: str) -> dict[str, Any]:
    """The `best_model.json` fields (docs/architecture.md), without the epoch-specific ones."""
    tax = taxonomy.to_dict()
    return {
        "model_name": cfg.model.name,
        "num_classes": taxonomy.num_classes,
        "classes": tax["classes"],
        "bins": tax["bins"],
        "sets": tax["sets"],
        "input_size": list(data_config["input_size"]),
        "mean": list(data_config["mean"]),
        "std": list(data_config["std"]),
        "interpolation": data_config["interpolation"],
        "crop_pct": data_config["crop_pct"],
        "crop_mode": data_config["crop_mode"],  # Predictor must crop as the final evaluation does
        "model_kwargs": model_kwargs(cfg.model),
        "manifest_hash": manifest_hash,
    }


def build_train_loss(cfg: Config, lake: Any, taxonomy: Taxonomy) -> PartialLabelLoss:
    weights = None
    if cfg.train.balance == "loss_weights":
        counts = class_counts((r.targets for r in lake.split("train")), taxonomy.num_classes)
        weights = inverse_frequency_weights(counts)  # on the CPU; float32 is MPS-safe
    return PartialLabelLoss(label_smoothing=cfg.train.label_smoothing, class_weights=weights)


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """timm's factory: no weight decay on norms, biases and `no_weight_decay()` params; layer-wise LR decay."""
    from timm.optim import create_optimizer_v2

    t = cfg.train
    return create_optimizer_v2(model, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay,
                               layer_decay=t.layer_decay, filter_bias_and_bn=True)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, updates_per_epoch: int):
    """Linear warmup then cosine to min_lr, stepped per optimizer update (timm, which honours lr_scale)."""
    from timm.scheduler import CosineLRScheduler

    t = cfg.train
    total = max(1, t.epochs * updates_per_epoch)
    warmup = min(total - 1, round(t.warmup_epochs * updates_per_epoch))
    return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=t.min_lr, warmup_t=warmup,
                             warmup_lr_init=t.lr * 0.01, warmup_prefix=True, t_in_epochs=False)


def set_lr(optimizer: torch.optim.Optimizer, scheduler: Any, updates: int, lr_factor: float) -> None:
    scheduler.step_update(updates)
    if lr_factor != 1.0:
        for group in optimizer.param_groups:
            group["lr"] *= lr_factor


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The largest group LR: the head's, which layer-wise decay leaves unscaled."""
    return max(float(g["lr"]) for g in optimizer.param_groups)


def build_ema(cfg: Config, model: nn.Module):
    if not cfg.train.ema:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg.train.ema_decay)


def sanity_check(model: nn.Module, batch: Any, loss_fn: nn.Module, device: torch.device, precision: PrecisionPlan,
                 num_classes: int, size: int, channels_last: bool) -> None:
    """One real batch through the model: batch and output shapes, finite loss. Eval mode: no state changes."""
    hint = "see README › Troubleshooting › 'Sanity check failed'"
    if batch is None or len(batch) == 0:
        raise RunFailed("Pre-training sanity check failed: the first training batch has no loadable image", hint)
    if tuple(batch.images.shape[1:]) != (3, size, size) or tuple(batch.targets.shape) != (len(batch), num_classes):
        raise RunFailed(f"Pre-training sanity check failed: batch images {tuple(batch.images.shape)} and targets "
                        f"{tuple(batch.targets.shape)}, expected [B, 3, {size}, {size}] and [B, {num_classes}]", hint)
    model.eval()
    images = images_on_device(batch, device, channels_last)
    with torch.no_grad(), autocast_context(device.type, precision, enabled=precision.autocast):
        out = model(images)
        loss = loss_fn(out, batch.targets.to(device))
    if tuple(out.shape) != (len(batch), num_classes):
        raise RunFailed(f"Pre-training sanity check failed: model output {tuple(out.shape)}, "
                        f"expected ({len(batch)}, {num_classes})", hint)
    if not torch.isfinite(loss):
        raise RunFailed(f"Pre-training sanity check failed: the loss of the first batch is {float(loss)}", hint)
    model.train()
    log.info("✅ Pre-training sanity check passed!")


def autocast_context(device_type: str, precision: PrecisionPlan, *, enabled: bool) -> contextlib.AbstractContextManager:
    """The one way the engine builds autocast: the plan's dtype when enabled, else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=getattr(torch, precision.dtype))


def images_on_device(batch: Any, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = batch.images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def plan_cpu_measured(cfg: Config, model: nn.Module, batch: Any, loss_fn: nn.Module, device: torch.device,
                      precision: PrecisionPlan, load_seconds: float, channels_last: bool, world: int) -> CpuPlan:
    """Time one training forward and backward of the sanity batch, plan threads and workers from it,
    apply the threads."""
    threads = torch.get_num_threads()  # the user's cap: train() starts from their setting
    images = images_on_device(batch, device, channels_last)
    # Train mode, as the steps will run: in eval mode a BatchNorm network's backward measured 3.8x
    # faster on the CPU (resnet18: 0.52 s against 1.99 s) and the plan misjudged the bottleneck. The
    # BatchNorm statistics and the RNG (drop path) are put back, so the run is as without the timing.
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    # The first backward builds autograd's buffers; of the next two the faster counts, so a burst
    # of other processes' load does not look like compute (it made the plan pick more threads).
    timings = []
    with torch.random.fork_rng(devices=[]):
        for _ in range(3):
            t = time.perf_counter()
            with autocast_context(device.type, precision, enabled=precision.autocast):
                loss = loss_fn(model(images), batch.targets.to(device))
            loss.backward()
            timings.append(time.perf_counter() - t)
            model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    step_seconds = min(timings[1:])
    setting = cfg.data.num_workers
    cpu = plan_cpu(cores=cpu_count(), step_seconds=step_seconds, step_threads=threads, load_seconds=load_seconds,
                   max_threads=threads, workers=None if setting == "auto" else int(setting), world_size=world)
    torch.set_num_threads(cpu.threads)
    log.info(cpu.line)
    return cpu

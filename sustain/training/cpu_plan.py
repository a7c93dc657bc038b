"""The CPU plan measured on the sanity batch: one timed training step decides threads and loader workers."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

from ..device import CpuPlan, PrecisionPlan, plan_cpu
from ..utils import cpu_count
from .precision import autocast_context, images_on_device, trial_passes

log = logging.getLogger("sustain.training.engine")  # the start-up sequence the engine prints, in its voice


def plan_cpu_measured(num_workers: int | str, model: nn.Module, batch: Any, loss_fn: nn.Module, device: torch.device,
                      precision: PrecisionPlan, load_seconds: float, channels_last: bool, world: int,
                      step_seconds: float | None = None) -> CpuPlan:
    """Time one training forward and backward of the sanity batch (unless `step_seconds` says how long
    it took: the bf16 probe timed it just now), plan threads and workers from it, apply the threads."""
    threads = torch.get_num_threads()  # the user's cap: train() starts from their setting
    if step_seconds is None:
        step_seconds = time_step(model, batch, loss_fn, device, precision, channels_last)
    setting = num_workers
    cpu = plan_cpu(cores=cpu_count(), step_seconds=step_seconds, step_threads=threads, load_seconds=load_seconds,
                   max_threads=threads, workers=None if setting == "auto" else int(setting), world_size=world)
    torch.set_num_threads(cpu.threads)
    log.info(cpu.line)
    return cpu


def time_step(model: nn.Module, batch: Any, loss_fn: nn.Module, device: torch.device, precision: PrecisionPlan,
              channels_last: bool) -> float:
    """The fastest of two timed training forward and backward passes of `batch`, after a warm-up."""
    images = images_on_device(batch, device, channels_last)
    # Train mode, as the steps will run (`trial_passes`): in eval mode a BatchNorm network's backward
    # measured 3.8x faster on the CPU (resnet18: 0.52 s against 1.99 s) and the plan misjudged the
    # bottleneck. The first backward builds autograd's buffers; of the next two the faster counts, so
    # a burst of other processes' load does not look like compute (it made the plan pick more threads).
    timings = []
    with trial_passes(model):
        for _ in range(3):
            t = time.perf_counter()
            with autocast_context(device.type, precision, enabled=precision.autocast):
                loss = loss_fn(model(images), batch.targets.to(device))
            loss.backward()
            timings.append(time.perf_counter() - t)
            model.zero_grad(set_to_none=True)
    return min(timings[1:])

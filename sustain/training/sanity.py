"""The pre-training sanity check: one real batch through the model before anything slow."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..device import PrecisionPlan
from ..errors import RunFailed
from .precision import autocast_context, images_on_device

log = logging.getLogger("sustain.training.engine")  # the start-up sequence the engine prints, in its voice


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

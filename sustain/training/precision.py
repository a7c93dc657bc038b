"""Running a step in the precision plan's dtype: the one autocast builder, and images on the device in the step's memory layout."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..device import PrecisionPlan


def autocast_context(device_type: str, precision: PrecisionPlan, *, enabled: bool) -> contextlib.AbstractContextManager:
    """The one way the engine builds autocast: the plan's dtype when enabled, else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=getattr(torch, precision.dtype))


def images_on_device(batch: Any, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = batch.images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images

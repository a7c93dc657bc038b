"""The optimizer (timm's factory), the warmup + cosine schedule, the LR as a function of the update count, and the EMA."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import TrainConfig


def build_optimizer(train: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """timm's factory: no weight decay on norms, biases and `no_weight_decay()` params; layer-wise LR decay."""
    from timm.optim import create_optimizer_v2

    t = train
    return create_optimizer_v2(model, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay,
                               layer_decay=t.layer_decay, filter_bias_and_bn=True)


def build_scheduler(train: TrainConfig, optimizer: torch.optim.Optimizer, updates_per_epoch: int):
    """Linear warmup then cosine to min_lr, stepped per optimizer update (timm, which honours lr_scale)."""
    from timm.scheduler import CosineLRScheduler

    t = train
    total = max(1, t.epochs * updates_per_epoch)
    warmup = min(total - 1, round(t.warmup_epochs * updates_per_epoch))
    return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=t.min_lr, warmup_t=warmup,
                             warmup_lr_init=t.lr * 0.01, warmup_prefix=True, t_in_epochs=False)


def lr_at(optimizer: torch.optim.Optimizer, scheduler: Any, updates: int, lr_factor: float) -> list[float]:
    """Each param group's LR for the update after `updates` updates (pure): the warmup + cosine value, times the
    group's `lr_scale` (layer-wise decay) as timm's `step_update` applies it, times the guards' factor."""
    values = scheduler._get_lr(updates)  # timm's schedule as a function of the update count
    return [v * g["lr_scale"] * lr_factor if "lr_scale" in g else v * lr_factor
            for v, g in zip(values, optimizer.param_groups, strict=True)]


def set_lr(optimizer: torch.optim.Optimizer, scheduler: Any, updates: int, lr_factor: float) -> None:
    """Set the LR just before an update: a resume's new `train.lr` and a halving take effect at once."""
    for group, lr in zip(optimizer.param_groups, lr_at(optimizer, scheduler, updates, lr_factor), strict=True):
        group["lr"] = lr


def head_lr(optimizer: torch.optim.Optimizer, scheduler: Any, updates: int, lr_factor: float) -> float:
    """The largest group LR for the next update: the head's, which layer-wise decay leaves unscaled."""
    return max(float(lr) for lr in lr_at(optimizer, scheduler, updates, lr_factor))


def build_ema(train: TrainConfig, model: nn.Module):
    if not train.ema:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=train.ema_decay)

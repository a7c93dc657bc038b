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


def set_lr(optimizer: torch.optim.Optimizer, scheduler: Any, updates: int, lr_factor: float) -> None:
    scheduler.step_update(updates)
    if lr_factor != 1.0:
        for group in optimizer.param_groups:
            group["lr"] *= lr_factor


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The largest group LR: the head's, which layer-wise decay leaves unscaled."""
    return max(float(g["lr"]) for g in optimizer.param_groups)


def build_ema(train: TrainConfig, model: nn.Module):
    if not train.ema:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=train.ema_decay)

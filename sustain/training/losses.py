"""The partial-label loss for set-labelled samples (SPEC §4, §6).

A sample's target is a multi-hot mask over the classes: one class for a fine
label, several for a set label ("one of these"). The loss is

    (1 - ε) · −log Σ_{c ∈ set} p_c  +  ε · mean_c(−log p_c)

For a single-class target this is exactly cross-entropy with label smoothing
ε (PyTorch's definition), so one loss serves both kinds of sample.

Optional class weights weight each sample by the mean weight of its set, and
the batch loss is the weighted mean (as PyTorch's weighted cross-entropy).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..taxonomy import Taxonomy


class PartialLabelLoss(nn.Module):
    def __init__(self, label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", class_weights.float() if class_weights is not None else None)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.per_sample(logits, targets, reduce=True)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor, reduce: bool = False) -> torch.Tensor:
        logits = logits.float()  # log-sum-exp in fp32 under autocast
        in_set = targets > 0
        log_norm = torch.logsumexp(logits, dim=1)
        log_p_set = torch.logsumexp(logits.masked_fill(~in_set, float("-inf")), dim=1) - log_norm
        loss = -log_p_set
        if self.label_smoothing > 0:
            mean_nll = log_norm - logits.mean(dim=1)  # mean_c(−log p_c)
            loss = (1.0 - self.label_smoothing) * loss + self.label_smoothing * mean_nll
        if not reduce:
            return loss
        if self.class_weights is None:
            return loss.mean()
        weights = (in_set.float() @ self.class_weights) / in_set.sum(dim=1).clamp_min(1)
        return (loss * weights).sum() / weights.sum()


def class_counts(targets: Iterable[Sequence[int]], num_classes: int) -> np.ndarray:
    """Samples per class; a set-labelled sample counts 1/|set| for each class of its set."""
    counts = np.zeros(num_classes, dtype=np.float64)
    for indices in targets:
        for c in indices:
            counts[c] += 1.0 / len(indices)
    return counts


def inverse_frequency_weights(counts: np.ndarray) -> torch.Tensor:
    """Class weights ∝ 1/count, mean 1 over the classes present; absent classes get 0.

    Computed in numpy on the CPU and returned as float32, which every device
    (MPS included, which has no float64) accepts.
    """
    weights = np.zeros_like(counts, dtype=np.float64)
    present = counts > 0
    weights[present] = 1.0 / counts[present]
    if present.any():
        weights[present] /= weights[present].mean()
    return torch.from_numpy(weights.astype(np.float32))


def sample_weights(targets: Sequence[Sequence[int]], class_weights: torch.Tensor) -> torch.Tensor:
    """Per-sample weights for a class-balanced `WeightedRandomSampler` (float64, CPU)."""
    w = class_weights.double().numpy()
    return torch.tensor([float(np.mean([w[c] for c in idx])) for idx in targets], dtype=torch.float64)


def build_train_loss(train: TrainConfig, lake: Any, taxonomy: Taxonomy) -> PartialLabelLoss:
    weights = None
    if train.balance == "loss_weights":
        counts = class_counts((r.targets for r in lake.split("train")), taxonomy.num_classes)
        weights = inverse_frequency_weights(counts)  # on the CPU; float32 is MPS-safe
    return PartialLabelLoss(label_smoothing=train.label_smoothing, class_weights=weights)

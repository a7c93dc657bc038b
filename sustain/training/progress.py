"""The epoch in progress: its update groups, its running sums and what each step hands up.

`update_groups` splits the epoch's batches into optimizer updates (gradient
accumulation); `EpochProgress` holds the running sums (on the device until
read; a mid-epoch checkpoint saves them, and `epoch_stats` sums them over the
ranks at the end); `StepOutcome` is what a micro-step (and the update it
closes) hands up to the loop, including the guards' escalation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .guards import COUNTS


def update_groups(start: int, total: int, accum_steps: int) -> list[tuple[int, int]]:
    """The batch ranges [lo, hi) of the epoch's optimizer updates from batch `start` on: each ends at a
    multiple of `accum_steps` or at the epoch's end (a run resumed inside a group finishes it first)."""
    if start >= total:
        return []
    first = min(total, (start // accum_steps + 1) * accum_steps)
    edges = [start, *range(first, total, accum_steps), total]
    return list(itertools.pairwise(edges))



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
        self.seen_before = self.seen  # images of this epoch trained before a resume
        self.seconds = 0.0  # this start's training time in the epoch (images per second)

    @classmethod
    def resume(cls, device: torch.device, partial: list[dict[str, Any]] | None, rank: int) -> EpochProgress:
        return cls(device, partial[rank] if partial and rank < len(partial) else None)

    def add(self, loss: torch.Tensor, hits: torch.Tensor) -> None:
        self.loss_sum += loss.to(self.loss_sum.dtype) * len(hits)
        self.correct += hits.sum()
        self.seen += len(hits)

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{float(self.loss_sum) / self.seen:.4f}", "acc": f"{100.0 * int(self.correct) / self.seen:.2f}%"}

    def epoch_stats(self, dist_sum: Callable[..., tuple]) -> dict[str, Any]:
        """The epoch's train loss, accuracy and counts; `dist_sum` adds the sums and data errors over the ranks."""
        counts = self.counts
        loss_sum, correct, seen, errors = dist_sum(float(self.loss_sum), int(self.correct), self.seen,
                                                   counts["data_errors"])
        counts["data_errors"] = int(errors)
        return {
            "loss": loss_sum / seen if seen else float("nan"),
            "acc": correct / seen if seen else float("nan"),
            "images_per_second": (self.seen - self.seen_before) / self.seconds if self.seconds > 0 else 0.0,
            **counts,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"loss_sum": float(self.loss_sum), "correct": int(self.correct), "seen": self.seen,
                "counts": dict(self.counts)}


@dataclass
class StepOutcome:
    """What a micro-step (and the update it closes) hands up to the loop."""

    index: int  # the global micro-step
    trained: int = 0  # 1 when the loss went through backward
    escalation: dict[str, Any] | None = None  # the guards' escalation at this step (`Guards.on_nonfinite`)
    signum: int = 0  # a stop signal, agreed over the ranks
    save_due: bool = False  # a mid-epoch checkpoint is due (rank 0's clock decides)

    @property
    def guard_stop(self) -> str | None:
        """Why the guards stop the run here (their last rung), or None."""
        e = self.escalation
        if e is None or e["action"] != "stop":
            return None
        return f"{e['after']} at step {e['step']} (epoch {e['epoch']}) after escalating (AMP off, LR halved)"

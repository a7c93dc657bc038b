"""The torchrun (DDP) environment: process group, collectives and rank-0-only duties.

A single process (no WORLD_SIZE, or 1) gets the same object with every
collective a no-op, so the training loop has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import Config
from ..data import ImageCache, ingest
from ..device import DevicePlan
from ..taxonomy import Taxonomy
from .rng import capture_rng_state


@dataclass
class Distributed:
    """The torchrun environment; a single process when WORLD_SIZE is absent or 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # set by init()
    owns_group: bool = False  # init() made the process group, so close() ends it (crossval keeps one for all folds)

    @classmethod
    def from_env(cls) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, plan: DevicePlan) -> torch.device:
        """Join the process group (NCCL on CUDA, gloo otherwise) and return this rank's device."""
        if plan.type == "cuda":
            device = torch.device("cuda", self.local_rank if self.enabled else 0)
            torch.cuda.set_device(device)
        else:
            device = torch.device(plan.type)
        if self.enabled and not torch_dist.is_initialized():
            torch_dist.init_process_group(backend="nccl" if plan.type == "cuda" else "gloo")
            self.owns_group = True
        self.device = device
        return device

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if not self.enabled:
            return model
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def ingest(self, cfg: Config, taxonomy: Taxonomy, out_dir: Path, image_cache: ImageCache | None = None):
        """Rank 0 ingests, fills the image cache and writes the manifest; the others then read the
        same lake quietly (cached)."""
        if self.is_main:
            lake = ingest(cfg, taxonomy, out_dir=out_dir, image_cache=image_cache)
        self.barrier()
        if not self.is_main:
            lake = ingest(cfg, taxonomy, out_dir=None, log_summary=False)
        return lake

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def _tensor(self, values: list[float]) -> torch.Tensor:
        device = self.device if self.device.type == "cuda" else torch.device("cpu")  # NCCL needs CUDA tensors
        return torch.tensor(values, dtype=torch.float64, device=device)

    def all_true(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag AND-ed over the ranks, so every rank takes the same branch."""
        if not self.enabled:
            return flags
        t = self._tensor([float(f) for f in flags])
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MIN)
        return tuple(bool(v) for v in t.tolist())

    def agree_step(self, has_data: bool, finite: torch.Tensor | None, signum: int,
                   save_due: bool) -> tuple[bool, bool, int, bool]:
        """The step's one read-back: data present and loss finite (AND over ranks), a stop signal and a
        due checkpoint (OR over ranks). The loss check stays on the device until here."""
        if not self.enabled:
            return has_data, has_data and bool(finite), signum, save_due
        host = self._tensor([float(has_data), -float(signum), -float(save_due)])  # NCCL: on this rank's GPU
        loss_ok = (finite.to(host.device, torch.float64) if finite is not None else host.new_zeros(())).reshape(1)
        flags = torch.cat([host[:1], loss_ok, host[1:]])
        torch_dist.all_reduce(flags, op=torch_dist.ReduceOp.MIN)  # min of -x is -max(x): an OR
        h, f, s, d = flags.tolist()
        return bool(h), bool(f), int(-s), bool(-d)

    def agree_signal(self, signum: int) -> int:
        """The stop signal any rank received (0: none), so every rank stops at the same point."""
        if not self.enabled:
            return signum
        t = self._tensor([float(signum)])
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return int(t.item())

    def sum(self, *values: float) -> tuple[float, ...]:
        if not self.enabled:
            return values
        t = self._tensor([float(v) for v in values])
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
        return tuple(t.tolist())

    def gather_predictions(self, preds: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every rank's validation shard, concatenated: each sample exactly once (ShardSampler pads nothing)."""
        if not self.enabled:
            return preds.logits, preds.targets, preds.source_ids
        shards: list[Any] = [None] * self.world
        torch_dist.all_gather_object(shards, (preds.logits, preds.targets, preds.source_ids))
        return tuple(torch.cat([s[i] for s in shards]) for i in range(3))  # type: ignore[return-value]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (plain types and CPU tensors), in rank order."""
        if not self.enabled:
            return [obj]
        objs: list[Any] = [None] * self.world
        torch_dist.all_gather_object(objs, obj)
        return objs

    def gather_rng(self) -> list[dict[str, Any]]:
        """Every rank's RNG states (rank order), for an exact resume of each."""
        return self.gather(capture_rng_state())

    def close(self) -> None:
        if self.enabled and torch_dist.is_initialized():
            torch_dist.barrier()
            if self.owns_group:
                torch_dist.destroy_process_group()

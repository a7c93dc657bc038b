"""Data loaders for training and evaluation (reproducible whatever the worker count).

The train order and each item's augmentation are functions of (seed, epoch,
index, rank) alone, so a resumed run, or one with a different number of
workers, sees exactly the same batches. Under DDP, training uses
DistributedSampler and evaluation a ShardSampler that pads nothing, so each
validation sample counts exactly once.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    WeightedRandomSampler,
    get_worker_info,
)
from torch.utils.data.distributed import DistributedSampler

from ..config import Config
from ..device import DevicePlan
from ..errors import UsageError
from ..taxonomy import Taxonomy
from .interrupts import ignore_stop_signals
from .losses import class_counts, inverse_frequency_weights, sample_weights

if TYPE_CHECKING:
    from .distributed import Distributed


class ShardSampler(Sampler[int]):
    """Rank r of W gets indices r, r+W, ...: every sample exactly once, no padding (evaluation under DDP)."""

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, length, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochIndexSampler(Sampler[tuple[int, int]]):
    """Yields (epoch, index) pairs from a sampler of indices, so each item knows which epoch draws it."""

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler = sampler
        self.epoch = 0
        self.skip = 0  # items already trained this epoch (a mid-epoch resume): never loaded again

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        # The whole order is drawn at once (randperm / multinomial), so skipping costs no decoding.
        return ((self.epoch, index) for index in itertools.islice(self.sampler, self.skip, None))

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


class SeededItems(Dataset):
    """Train items whose random augmentation is a function of (seed, epoch, index) alone.

    The same image gets the same crop in any worker, with any number of workers,
    persistent or not, and after a resume: data loading never depends on which
    process happened to load an item. The Python, NumPy (timm's RandAugment) and
    torch generators are seeded per item; in the main process (num_workers=0)
    torch's stream, which the model draws from (drop path), is left as it was.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        item_seed = _item_seed(self.seed, epoch, index)
        random.seed(item_seed)
        np.random.seed(item_seed % 2**32)
        cpu_rng = torch.default_generator  # manual_seed would also seed every accelerator: 60x slower
        if get_worker_info() is not None:  # a worker process: its RNG serves only the data
            cpu_rng.manual_seed(item_seed)
            return self.dataset[index]
        saved = cpu_rng.get_state()
        cpu_rng.manual_seed(item_seed)
        try:
            return self.dataset[index]
        finally:
            cpu_rng.set_state(saved)


def _item_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % 2**63


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    train_batches: int
    seed: int
    rank: int
    generator: torch.Generator
    final: dict[str, DataLoader | None]
    train_items: SeededItems

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The order and the augmentation of an epoch depend on (seed, epoch, rank) only: a resume replays them.

        `start_batch` > 0 continues the epoch there: the earlier batches are skipped, not loaded.
        """
        sampler: EpochIndexSampler = self.train.sampler  # type: ignore[assignment]
        sampler.set_epoch(epoch)
        sampler.skip = start_batch * (self.train.batch_size or 1)
        self.generator.manual_seed(_epoch_seed(self.seed, epoch, self.rank))

    def sanity_batch(self):
        from ..data import collate_skip_failed

        n = min(self.train.batch_size or 1, len(self.train_items))
        return collate_skip_failed([self.train_items[(0, i)] for i in range(n)])


def build_loaders(cfg: Config, lake: Any, taxonomy: Taxonomy, train_tf, eval_tf, plan: DevicePlan, workers: int,
                  dist: Distributed, image_cache: Any = None) -> Loaders:
    from ..data import ManifestDataset, collate_skip_failed

    rows = {split: lake.split(split) for split in ("train", "val", "test", "ood")}
    if not rows["train"]:
        raise UsageError("No training images: the train split is empty", "add images or sources (see data_summary.json)")
    if not rows["val"]:
        raise UsageError("No validation images: the val split is empty",
                         "add images, or raise data.split.val so each class has a val image")

    def dataset(split: str, tf) -> ManifestDataset:
        return ManifestDataset(rows[split], taxonomy.num_classes, lake.sources, tf,
                               max_image_pixels=cfg.data.max_image_pixels, image_cache=image_cache)

    generator = torch.Generator()
    train_items = SeededItems(dataset("train", train_tf), cfg.seed + dist.rank)
    if dist.enabled:
        if cfg.train.balance == "sampler":
            raise UsageError("train.balance: sampler is not supported under torchrun (DDP)",
                             "use train.balance: loss_weights, which works the same on every rank")
        sampler: Sampler = DistributedSampler(train_items, num_replicas=dist.world, rank=dist.rank, shuffle=True,
                                              seed=cfg.seed, drop_last=False)
    elif cfg.train.balance == "sampler":
        weights = inverse_frequency_weights(class_counts((r.targets for r in rows["train"]), taxonomy.num_classes))
        sampler = WeightedRandomSampler(sample_weights([r.targets for r in rows["train"]], weights),
                                        num_samples=len(train_items), replacement=True, generator=generator)
    else:
        sampler = RandomSampler(train_items, generator=generator)

    # Each loader draws its worker seed from its own generator, never from the global RNG the model uses.
    common: dict[str, Any] = {"num_workers": workers, "collate_fn": collate_skip_failed, "pin_memory": plan.pin_memory}
    if workers > 0:  # no re-spawn per epoch; ride out hiccups; Ctrl-C is the training process's to handle
        common.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=ignore_stop_signals)
    batch_size = cfg.train.batch_size
    drop_last = len(sampler) > batch_size  # a last batch of 1 breaks BatchNorm
    train = DataLoader(train_items, batch_size=batch_size, sampler=EpochIndexSampler(sampler), drop_last=drop_last,
                       generator=torch.Generator(), **common)  # not the sampler's: the order must not depend on workers
    batches = len(train)
    if cfg.train.max_steps_per_epoch:
        batches = min(batches, cfg.train.max_steps_per_epoch)

    val_ds = dataset("val", eval_tf)
    val = DataLoader(val_ds, batch_size=batch_size, sampler=ShardSampler(len(val_ds), dist.rank, dist.world),
                     generator=torch.Generator(), **common)
    once = {**common, "persistent_workers": False, "generator": torch.Generator()}  # the final evaluation reads once
    final: dict[str, DataLoader | None] = {"val": DataLoader(val_ds, batch_size=batch_size, shuffle=False, **once)}
    for split in ("test", "ood"):  # ood: the held-out sources (data.split.holdout_sources), scored beside test
        final[split] = (DataLoader(dataset(split, eval_tf), batch_size=batch_size, shuffle=False, **once)
                        if rows[split] else None)
    return Loaders(train=train, val=val, train_batches=batches, seed=cfg.seed, rank=dist.rank, generator=generator,
                   final=final, train_items=train_items)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 1_009 + rank) % (2**63)



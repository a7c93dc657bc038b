"""The engine's data plumbing: per-item seeded augmentation, epoch-aware sampling, DDP val shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler

from sustain.config import DataConfig
from sustain.training.loaders import EpochIndexSampler, SeededItems, ShardSampler
from sustain.transforms import build_train_transform

DATA_CONFIG = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
               "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center"}


class StrongImages(Dataset):
    """Noise images through the `strong` preset (crop, flip, RandAugment: Python, NumPy and torch RNG)."""

    def __init__(self, n: int = 6) -> None:
        data = DataConfig(sources=[{"name": "s", "root": "r", "label_map": "identity"}], augment="strong",
                          augment_options={"random_erasing": 0.5})  # random erasing draws from torch
        self.tf = build_train_transform(DATA_CONFIG, data)
        rng = np.random.default_rng(0)
        self.images = [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8), "RGB") for _ in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.tf(self.images[index])


def test_augmentation_is_a_function_of_seed_epoch_and_index() -> None:
    items = SeededItems(StrongImages(), seed=42)
    assert torch.equal(items[(1, 3)], items[(1, 3)])
    assert not torch.equal(items[(1, 3)], items[(2, 3)])  # another epoch, another crop
    assert not torch.equal(items[(1, 3)], SeededItems(StrongImages(), seed=43)[(1, 3)])


def test_workers_produce_the_same_items_as_the_main_process() -> None:
    items = SeededItems(StrongImages(), seed=42)
    keys = [(1, i) for i in range(6)]
    in_main = [items[k] for k in keys]
    loader = DataLoader(items, batch_size=None, sampler=keys, num_workers=2, persistent_workers=True)
    for _ in range(2):  # a persistent worker's second pass too
        in_workers = list(loader)
        assert all(torch.equal(a, b) for a, b in zip(in_main, in_workers, strict=True))


def test_loading_in_the_main_process_leaves_the_model_rng_stream_alone() -> None:
    items = SeededItems(StrongImages(), seed=42)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    items[(1, 0)]
    assert torch.equal(torch.rand(3), expected)


def test_epoch_index_sampler_tags_indices_with_the_epoch() -> None:
    g = torch.Generator()
    sampler = EpochIndexSampler(RandomSampler(range(5), generator=g))
    sampler.set_epoch(3)
    g.manual_seed(0)
    pairs = list(sampler)
    assert {e for e, _ in pairs} == {3} and sorted(i for _, i in pairs) == [0, 1, 2, 3, 4]
    assert len(sampler) == 5


def test_shards_cover_every_validation_sample_exactly_once() -> None:
    shards = [list(ShardSampler(7, rank, 3)) for rank in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))
    assert [len(s) for s in shards] == [3, 2, 2]  # unequal, never padded



def test_balancing_changes_the_classes_seen_and_what_a_mistake_costs(tmp_path: Path) -> None:
    """On a lake where one class has five times as many images as each other class, `balance: sampler`
    evens out the classes the model sees, and `balance: loss_weights` makes a mistake on a rare
    class cost more than the same mistake on the common one."""
    from engine_helpers import TINY_CLASSES, make_tiny_lake, tiny_config
    from torchvision import transforms as T

    from sustain.data.lake import ingest
    from sustain.device import detect_backends, plan_device
    from sustain.taxonomy import build_taxonomy
    from sustain.training.distributed import Distributed
    from sustain.training.loaders import build_loaders
    from sustain.training.losses import PartialLabelLoss, build_train_loss

    common, rare = TINY_CLASSES[0], TINY_CLASSES[1:]
    make_tiny_lake(tmp_path / "lake", classes=[common], per_class=30)
    make_tiny_lake(tmp_path / "lake", classes=rare, per_class=6, seed=1)
    to_tensor = T.Compose([T.Resize((32, 32)), T.ToTensor()])

    def shares(balance: str) -> np.ndarray:
        cfg = tiny_config(tmp_path / "lake", tmp_path / balance, train={"balance": balance})
        taxonomy = build_taxonomy(**cfg.taxonomy.model_dump())
        lake = ingest(cfg, taxonomy, log_summary=False)
        loaders = build_loaders(cfg, lake, taxonomy, to_tensor, to_tensor, plan_device("cpu", detect_backends()), 0,
                                Distributed())
        seen = np.zeros(taxonomy.num_classes)
        for epoch in range(1, 21):
            loaders.set_epoch(epoch)
            for batch in loaders.train:
                seen += batch.targets.sum(dim=0).numpy()
        return seen / seen.sum()

    plain, sampled = shares("none"), shares("sampler")
    assert plain[0] > 0.4  # 30 of 60 images
    assert sampled[0] < 0.3 and sampled[1:].min() > 0.1  # about a sixth each

    cfg = tiny_config(tmp_path / "lake", tmp_path / "w", train={"balance": "loss_weights"})
    taxonomy = build_taxonomy(**cfg.taxonomy.model_dump())
    weighted = build_train_loss(cfg.train, ingest(cfg, taxonomy, log_summary=False), taxonomy)
    targets = torch.eye(taxonomy.num_classes)[[0, 1]]  # a batch of two: one common image, one rare

    def batch_loss(loss_fn: torch.nn.Module, wrong: int) -> float:  # the model errs on image `wrong`
        logits = torch.zeros(2, taxonomy.num_classes)
        logits[0, 0], logits[1, 1] = (-4.0, 4.0) if wrong == 0 else (4.0, -4.0)
        return float(loss_fn(logits, targets))

    plain = PartialLabelLoss()
    assert batch_loss(weighted, wrong=1) > 1.5 * batch_loss(plain, wrong=1)  # a rare mistake costs more
    assert batch_loss(weighted, wrong=0) < 0.75 * batch_loss(plain, wrong=0)  # a common one less

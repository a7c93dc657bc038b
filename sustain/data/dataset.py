"""The PyTorch side of the lake: a Dataset over manifest rows and its collate function.

An item is `(image, target_mask, source_id)`: the transformed image, a
float32 multi-hot mask over the classes (one-hot for a fine label, several
ones for a set label) and the index of the row's source. A file that fails
to load after ingest (deleted, rewritten, truncated since) gives `None`: it is
logged with its path, and `collate_skip_failed` drops it from its batch and
counts it. It is never replaced by another image or a blank one.

The dataset keeps plain lists and one tensor, so pickling it into DataLoader
workers (spawn on macOS and Windows) is cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from .image_cache import ImageCache
from .manifest import ManifestRow
from .scan import CorruptImage, load_rgb

log = logging.getLogger("sustain.data.dataset")

Item = tuple[torch.Tensor, torch.Tensor, int]


class ManifestDataset(Dataset):
    """Images of manifest rows, decoded the way ingest decoded them (EXIF, RGB, pixel limit)."""

    def __init__(self, rows: Sequence[ManifestRow], num_classes: int, source_names: Sequence[str],
                 transform: Callable[[Any], torch.Tensor] | None, *, max_image_pixels: int | None = None,
                 image_cache: ImageCache | None = None) -> None:
        source_index = {name: i for i, name in enumerate(source_names)}
        unknown = sorted({r.source for r in rows} - set(source_index))
        if unknown:
            raise ValueError(f"rows come from sources {unknown} that are not in source_names {list(source_names)}")
        self.paths = [r.path for r in rows]
        self.source_ids = [source_index[r.source] for r in rows]
        self.targets = torch.zeros(len(rows), num_classes, dtype=torch.float32)
        for i, r in enumerate(rows):
            if not r.targets or max(r.targets) >= num_classes:
                raise ValueError(f"{r.path}: targets {r.targets} do not fit {num_classes} classes")
            self.targets[i, list(r.targets)] = 1.0
        self.num_classes = num_classes
        self.transform = transform
        self.max_image_pixels = max_image_pixels
        self.image_cache = image_cache  # training-resolution copies (data/image_cache.py); None: the originals

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item | None:
        path = self.paths[index]
        try:
            image = (self.image_cache.load(path) if self.image_cache is not None
                     else load_rgb(path, self.max_image_pixels))
        except CorruptImage as exc:
            log.warning("⚠️  Could not load %s (%s): dropped from its batch", path, exc.reason)
            return None
        tensor = self.transform(image) if self.transform is not None else _to_tensor(image)
        return tensor, self.targets[index].clone(), self.source_ids[index]


def _to_tensor(image) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0)


@dataclass
class Batch:
    """A collated batch. `failed` counts items of this batch that could not be loaded."""

    images: torch.Tensor  # [B, 3, H, W]; B may be 0 when every item failed
    targets: torch.Tensor  # float32 [B, C] multi-hot
    source_ids: torch.Tensor  # int64 [B]
    failed: int = 0

    def __len__(self) -> int:
        return int(self.source_ids.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(self.images.to(device, non_blocking=non_blocking),
                     self.targets.to(device, non_blocking=non_blocking),
                     self.source_ids.to(device, non_blocking=non_blocking), self.failed)

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        return Batch(self.images.pin_memory(), self.targets.pin_memory(), self.source_ids.pin_memory(), self.failed)


def collate_skip_failed(items: Sequence[Item | None]) -> Batch:
    """Stack the items that loaded; count the ones that did not."""
    good = [item for item in items if item is not None]
    failed = len(items) - len(good)
    if not good:
        return Batch(torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.int64), failed)
    images = torch.stack([item[0] for item in good])
    targets = torch.stack([item[1] for item in good])
    source_ids = torch.tensor([item[2] for item in good], dtype=torch.int64)
    return Batch(images, targets, source_ids, failed)

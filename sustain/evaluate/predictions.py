"""Running a model over a loader: the one place a model is run over a DataLoader of
`sustain.data.dataset.Batch` objects. Validation during training and every final
evaluation use `collect_predictions`, so they cannot disagree; `indexed_loader`
keeps each prediction's file path for the per-sample store.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm


@dataclass
class Predictions:
    """A model's outputs over a whole loader, on the CPU, in loader order."""

    logits: torch.Tensor  # float32 [N, C]
    targets: torch.Tensor  # float32 [N, C] multi-hot
    source_ids: torch.Tensor  # int64 [N]
    failed: int  # samples the loader dropped because they could not be read
    indices: torch.Tensor | None = None  # int64 [N]: dataset index of each row, from an `indexed_loader`
    temperature: float = 1.0  # calibration (`sustain.evaluate.calibration`): probs are softmax(logits / T)

    @property
    def probs(self) -> torch.Tensor:
        return (self.logits / self.temperature).softmax(dim=1)

    @property
    def raw_probs(self) -> torch.Tensor:
        """The uncalibrated softmax, for ECE before calibration."""
        return self.logits.softmax(dim=1)


def _autocast_context(autocast: Any) -> contextlib.AbstractContextManager:
    """`autocast` may be None/False (no autocast), a factory returning a context
    manager (e.g. ``functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)``),
    or a re-enterable context manager such as a ``torch.autocast`` object."""
    if not autocast:
        return contextlib.nullcontext()
    if hasattr(autocast, "__enter__"):
        return autocast
    if callable(autocast):
        return autocast()
    raise TypeError(f"autocast must be None, a context manager or a factory of one, got {autocast!r}")


def collect_predictions(
    model: torch.nn.Module,
    loader: Iterable[Any],
    device: torch.device | str,
    autocast: Any = None,
    *,
    desc: str = "Validation",
    progress: bool = True,
) -> Predictions:
    """Run `model` in eval mode over every batch of `loader` and gather its logits.

    Batches are `sustain.data.dataset.Batch` objects (``images``, ``targets``,
    ``source_ids``, ``failed``). The model is left in eval mode; callers that
    train next call ``model.train()`` themselves.
    """
    device = torch.device(device)
    model.eval()
    logits, targets, source_ids, indices, failed = [], [], [], [], 0
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
            if isinstance(batch, tuple):  # (Batch, dataset indices) from an indexed_loader
                batch, index = batch
                indices.append(index)
            failed += int(batch.failed)
            if batch.images is None or len(batch.images) == 0:
                continue
            images = batch.images.to(device, non_blocking=True)
            with _autocast_context(autocast):
                out = model(images)
            logits.append(out.float().cpu())
            targets.append(batch.targets.float().cpu())
            source_ids.append(batch.source_ids.long().cpu())
    num_classes = _num_outputs(model)
    return Predictions(
        logits=torch.cat(logits) if logits else torch.zeros(0, num_classes),
        targets=torch.cat(targets) if targets else torch.zeros(0, num_classes),
        source_ids=torch.cat(source_ids) if source_ids else torch.zeros(0, dtype=torch.long),
        failed=failed,
        indices=torch.cat(indices) if indices else None,
    )


class _Indexed(Dataset):
    """A dataset whose items also carry their index (module level: DataLoader workers pickle it)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


class _IndexedCollate:
    """The loader's collate over the items, plus the indices of those that loaded."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, items: Sequence[tuple[int, Any]]) -> tuple[Any, torch.Tensor]:
        loaded = torch.tensor([i for i, item in items if item is not None], dtype=torch.int64)
        return self.collate([item for _, item in items]), loaded


def indexed_loader(loader: Any) -> Any:
    """The same DataLoader whose batches also say which dataset rows they hold, so each
    prediction keeps its file path even when unreadable images were dropped.
    Anything but a DataLoader over a dataset with ``paths`` is returned as is."""
    if not isinstance(loader, DataLoader) or not hasattr(loader.dataset, "paths"):
        return loader
    workers = loader.num_workers
    return DataLoader(_Indexed(loader.dataset), batch_size=loader.batch_size, shuffle=False, num_workers=workers,
                      collate_fn=_IndexedCollate(loader.collate_fn), pin_memory=loader.pin_memory,
                      prefetch_factor=loader.prefetch_factor if workers else None)


def _num_outputs(model: torch.nn.Module) -> int:
    num = getattr(model, "num_classes", None)
    if isinstance(num, int):
        return num
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return last[-1].out_features if last else 0

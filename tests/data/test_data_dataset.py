"""ManifestDataset and collate_skip_failed: targets, source ids, files failing after ingest, pickling."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from sustain.config import config_from_dict
from sustain.data.dataset import ManifestDataset, collate_skip_failed
from sustain.data.lake import ingest
from sustain.taxonomy import build_taxonomy

TAX = build_taxonomy()
TRANSFORM = T.Compose([T.Resize((16, 16)), T.ToTensor()])


@pytest.fixture
def lake(tmp_path: Path):
    rng = np.random.default_rng(0)
    for folder, n in {"fine/shoes": 10, "fine/clothing": 10, "coarse/metal": 10}.items():
        for i in range(n):
            pixels = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            path = tmp_path / "data" / folder / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).resize((20, 30), Image.Resampling.BICUBIC).save(path)
    cfg = config_from_dict({"data": {"root": str(tmp_path / "data"), "cache_dir": str(tmp_path / "cache"), "sources": [
        {"name": "fine", "root": "fine", "label_map": "identity"},
        {"name": "coarse", "root": "coarse", "label_map": {"metal": "METAL"}},
    ]}})
    return ingest(cfg, TAX, log_summary=False)


def test_items_carry_image_target_mask_and_source_id(lake) -> None:
    ds = ManifestDataset(lake.rows, TAX.num_classes, lake.sources, TRANSFORM)
    assert len(ds) == 30
    for i, row in enumerate(lake.rows):
        image, target, source_id = ds[i]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32
        assert target.dtype == torch.float32 and target.shape == (TAX.num_classes,)
        assert torch.nonzero(target).flatten().tolist() == list(row.targets)
        assert lake.sources[source_id] == row.source
    metal = next(i for i, r in enumerate(lake.rows) if r.label == "METAL")
    assert ds[metal][1].sum() == 4  # one of the four metal classes
    shoes = next(i for i, r in enumerate(lake.rows) if r.label == "shoes")
    assert ds[shoes][1][TAX.index("shoes")] == 1 and ds[shoes][1].sum() == 1


def test_file_failing_after_ingest_is_dropped_from_its_batch_and_counted(lake, sustain_log) -> None:
    rows = lake.split("train")[:6]
    Path(rows[1].path).write_bytes(b"")  # emptied since ingest
    Path(rows[4].path).unlink()  # deleted since ingest
    ds = ManifestDataset(rows, TAX.num_classes, lake.sources, TRANSFORM)
    items = [ds[i] for i in range(len(ds))]
    batch = collate_skip_failed(items)
    assert items[1] is None and items[4] is None
    warned = [r.getMessage() for r in sustain_log.records if r.levelno == logging.WARNING]
    assert any(rows[1].path in w and "zero bytes" in w for w in warned)
    assert any(rows[4].path in w and "unreadable" in w for w in warned)
    assert batch.failed == 2 and len(batch) == 4
    assert batch.images.shape == (4, 3, 16, 16)
    kept = [0, 2, 3, 5]
    assert torch.equal(batch.targets, torch.stack([items[i][1] for i in kept]))
    assert batch.source_ids.dtype == torch.int64
    assert batch.source_ids.tolist() == [lake.sources.index(rows[i].source) for i in kept]
    # no stand-in: the surviving images are exactly those of the surviving files
    assert torch.equal(batch.images[1], items[2][0])


def test_batch_where_every_item_failed_is_empty_not_padded() -> None:
    batch = collate_skip_failed([None, None, None])
    assert batch.failed == 3 and len(batch) == 0 and batch.images.numel() == 0


def test_unknown_source_or_class_index_is_refused(lake) -> None:
    with pytest.raises(ValueError, match="not in source_names"):
        ManifestDataset(lake.rows, TAX.num_classes, ["fine"], TRANSFORM)
    with pytest.raises(ValueError, match="do not fit 3 classes"):
        ManifestDataset(lake.rows, 3, lake.sources, TRANSFORM)


def test_dataset_pickles_for_workers(lake) -> None:
    ds = ManifestDataset(lake.rows, TAX.num_classes, lake.sources, TRANSFORM)
    clone = pickle.loads(pickle.dumps(ds))
    a, b = ds[3], clone[3]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


@pytest.mark.slow
def test_spawned_dataloader_workers_skip_failed_files(lake) -> None:
    rows = lake.rows[:8]
    Path(rows[2].path).write_bytes(b"not an image any more")
    ds = ManifestDataset(rows, TAX.num_classes, lake.sources, TRANSFORM)
    loader = DataLoader(ds, batch_size=4, num_workers=1, collate_fn=collate_skip_failed,
                        multiprocessing_context="spawn")
    batches = list(loader)
    assert [b.failed for b in batches] == [1, 0]
    assert [len(b) for b in batches] == [3, 4]

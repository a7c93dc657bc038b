"""Tiny models, their checkpoints, images, manifest rows and loaders: what the evaluate and deploy tests share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sustain.data.dataset import ManifestDataset, collate_skip_failed
from sustain.data.manifest import ManifestRow
from sustain.evaluate import (
    collect_predictions,
)
from sustain.taxonomy import Taxonomy
from sustain.training.checkpoints import save_best, state_dict_copy
from sustain.transforms import build_eval_transform

SIZE = 32
SMALL = Taxonomy(
    classes=("glass_jar", "tin_can", "banana_peel", "crisp_packet"),
    bins={"recycle": ("glass_jar", "tin_can"), "compost": ("banana_peel",), "landfill": ("crisp_packet",)},
    sets={"RECYCLABLE": ("glass_jar", "tin_can")},
)


# --------------------------------------------------------------------------- shared helpers


def tiny_model(num_classes: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("test_vit", pretrained=False, num_classes=num_classes, img_size=SIZE,
                             drop_path_rate=0.0).eval()


def export_meta(taxonomy: Taxonomy, epoch: int = 1, val_acc: float = 0.5) -> dict:
    return {
        **taxonomy.to_dict(),
        "model_name": "test_vit",
        "num_classes": taxonomy.num_classes,
        "input_size": [3, SIZE, SIZE],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bilinear",
        "crop_pct": 0.875,
        "model_kwargs": {"img_size": SIZE, "drop_path_rate": 0.0},
        "epoch": epoch,
        "val_acc": val_acc,
        "manifest_hash": "test",
    }


def save_tiny_checkpoint(out_dir: Path, model: torch.nn.Module, taxonomy: Taxonomy, epoch: int = 1,
                         val_acc: float = 0.5) -> Path:
    """best_model_*.pth + best_model.safetensors + best_model.json, as training writes them."""
    return save_best(out_dir, state_dict_copy(model), export_meta(taxonomy, epoch, val_acc))


def write_images(folder: Path, n: int, seed: int = 0, prefix: str = "img") -> list[Path]:
    """Random RGB PNGs of assorted sizes (so resize and crop really run)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = int(rng.integers(24, 80)), int(rng.integers(24, 80))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[: h // 2] = rng.integers(0, 256, 3, dtype=np.uint8)  # a block of colour, so images differ a lot
        path = folder / f"{prefix}_{i:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def write_corrupt(path: Path) -> Path:
    """A PNG cut in half: decodes as a truncated file."""
    good = write_images(path.parent / "_src", 1, seed=99)[0].read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(good[: len(good) // 2])
    return path


def rows_for(paths: list[Path], targets: list[tuple[int, ...]], taxonomy: Taxonomy, source: str = "lake_a",
             split: str = "val") -> list[ManifestRow]:
    return [ManifestRow(path=str(p), source=source, label=taxonomy.label_name(t), targets=tuple(t), split=split,
                        content_hash=f"h{i}", group=i) for i, (p, t) in enumerate(zip(paths, targets, strict=True))]


def loader_for(rows: list[ManifestRow], taxonomy: Taxonomy, sources: list[str], batch_size: int = 4) -> DataLoader:
    data_config = {"input_size": (3, SIZE, SIZE), "mean": (0.5,) * 3, "std": (0.5,) * 3,
                   "interpolation": "bilinear", "crop_pct": 0.875}
    ds = ManifestDataset(rows, taxonomy.num_classes, sources, build_eval_transform(data_config))
    return DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate_skip_failed)


def predicted_classes(model: torch.nn.Module, paths: list[Path], taxonomy: Taxonomy) -> list[int]:
    """What `model` predicts for each image, through the training-side eval pipeline."""
    rows = rows_for(paths, [(0,)] * len(paths), taxonomy)
    preds = collect_predictions(model, loader_for(rows, taxonomy, ["lake_a"]), "cpu", progress=False)
    return preds.logits.argmax(1).tolist()


# --------------------------------------------------------------------------- tests

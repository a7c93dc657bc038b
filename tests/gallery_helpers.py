"""A run folder whose prediction stores point at real photos on disk (for the gallery and report tests).

The photos are JPEGs of noise over a colour block, the hardest case for the
thumbnail size budget; each split has some confident mistakes, a few
mislabelled images (the label says one class, the model is sure of another)
and a few set-labelled images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sustain.evaluate.gallery import SamplePredictions, predictions_file, save_predictions
from sustain.taxonomy import Taxonomy, build_taxonomy

TAXONOMY = build_taxonomy()  # master_30
SOURCES = ("demo_master", "demo_coarse")


def write_photos(folder: Path, n: int, seed: int, size: tuple[int, int] = (400, 300)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        pixels[: size[1] // 2] = rng.integers(0, 256, 3, dtype=np.uint8)
        path = folder / f"photo_{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def make_store(paths: list[Path], split: str, seed: int, taxonomy: Taxonomy = TAXONOMY) -> SamplePredictions:
    """Predictions for `paths`: ~70% right, ~20% confidently wrong, 3 mislabelled, 4 set-labelled (PLASTIC)."""
    rng = np.random.default_rng(seed)
    n, c = len(paths), taxonomy.num_classes
    truth = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c))
    logits[np.arange(n), truth] += 6.0
    wrong = rng.random(n) < 0.2
    other = (truth + rng.integers(1, c, n)) % c
    logits[wrong, other[wrong]] += rng.uniform(6.5, 12.0, int(wrong.sum()))
    targets = np.zeros((n, c), dtype=bool)
    targets[np.arange(n), truth] = True
    mislabelled = np.arange(3)  # the model is sure of `truth`; the label says truth+1
    targets[mislabelled] = False
    targets[mislabelled, (truth[mislabelled] + 1) % c] = True
    logits[mislabelled, truth[mislabelled]] += 10.0
    plastic = list(taxonomy.resolve("PLASTIC"))
    targets[n - 4:] = False
    targets[n - 4:, plastic] = True
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    labels = [taxonomy.label_name(np.flatnonzero(t).tolist()) for t in targets]
    sources = [SOURCES[i % 2] for i in range(n)]
    return SamplePredictions(split=split, classes=taxonomy.classes, paths=np.array([str(p) for p in paths]),
                             sources=np.array(sources), labels=np.array(labels), probs=probs.astype(np.float32),
                             targets=targets)


def add_gallery(run: Path, n_val: int = 120, n_test: int = 80) -> dict[str, SamplePredictions]:
    """Write photos beside `run` and its predictions_val/test.npz; returns the stores."""
    stores = {}
    for split, n, seed in (("val", n_val, 1), ("test", n_test, 2)):
        paths = write_photos(run.parent / "photos" / split, n, seed)
        stores[split] = make_store(paths, split, seed)
        save_predictions(run / predictions_file(split), stores[split])
    return stores

"""Do the image cache's small copies change what a trained model predicts? (issue 13)

    python benchmarks/bench_cache_agreement.py                  # 6 classes x 60 photos of 2016x1512
    python benchmarks/bench_cache_agreement.py --per-class 40 --epochs 6 --size 1600x1200

A photo-like lake: each class is one of scikit-image's photographs; each image
a random crop of it (25-60% of the area, anywhere), maybe mirrored, with a
colour cast, sensor noise, saved as a camera-size JPEG (q90). 40% of each class
goes to val, so the agreement is measured on enough images. One training run
with `data.image_cache: auto` (test_vit at 128 px: the cache stores copies
at 128 / crop_pct = 135 px, filled through JPEG draft decoding), then the same best checkpoint
scores the val split twice, in one process, in float32: once reading the
cache's copies, once decoding the originals (`data.image_cache: off`, as
`sustain evaluate` does). Reports the share of val images whose top class
agrees (goal >= 99%), the largest change of a probability, and both accuracies.
Writes benchmarks/results/bench_cache_agreement.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

if not __package__:  # run as a script: the project root on sys.path, for `benchmarks` and `sustain`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import arg_parser, results_file, write_result  # noqa: E402

RESULTS = results_file("bench_cache_agreement")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def photo_lake(root: Path, per_class: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """root/photos/<class>/img_<i>.jpg, one class per scikit-image photograph; returns the class names."""
    from skimage import data as samples

    rng = np.random.default_rng(seed)
    width, height = size
    for name in PHOTOS:
        base = Image.fromarray(getattr(samples, name)()[..., :3])
        folder = root / "photos" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            area = rng.uniform(0.25, 0.6)
            w = int(base.width * np.sqrt(area))
            h = min(base.height, int(w * height / width))
            x, y = rng.integers(0, base.width - w + 1), rng.integers(0, base.height - h + 1)
            img = base.crop((x, y, x + w, y + h)).resize(size, Image.Resampling.BICUBIC)
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            pixels = np.asarray(img, dtype=np.float32) * rng.uniform(0.8, 1.2, 3)
            pixels += rng.normal(0, 4, pixels.shape)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"img_{i:03d}.jpg", quality=90)
    return list(PHOTOS)


def score(loaded, rows, sources, cache) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Probabilities and targets of `rows` under a loaded checkpoint, read through `cache` (None: the originals)."""
    from torch.utils.data import DataLoader

    from sustain.data.dataset import ManifestDataset, collate_skip_failed
    from sustain.evaluate import collect_predictions, indexed_loader
    from sustain.transforms import build_eval_transform

    dataset = ManifestDataset(rows, loaded.taxonomy.num_classes, sources,
                              build_eval_transform(dict(loaded.data_config)), image_cache=cache)
    loader = DataLoader(dataset, batch_size=32, shuffle=False, collate_fn=collate_skip_failed)
    preds = collect_predictions(loaded.model, indexed_loader(loader), "cpu", progress=False)
    assert preds.failed == 0 and preds.indices is not None
    paths = [dataset.paths[i] for i in preds.indices.tolist()]
    return torch.softmax(preds.logits, dim=1).numpy(), preds.targets.numpy(), paths


def run_config(tmp: Path, classes: list[str], epochs: int) -> dict:
    """The training run's config: test_vit at 128 px on the photo lake in `tmp`, the image cache on."""
    return {
        "seed": 0, "output_dir": str(tmp / "run"), "device": "cpu",
        "taxonomy": {"classes": classes, "bins": None, "sets": {}},
        "data": {"root": str(tmp / "lake"), "sources": [{"name": "photos", "root": "photos", "label_map": "identity"}],
                 "split": {"train": 0.5, "val": 0.4, "test": 0.1}, "augment": "light", "image_cache": "auto"},
        "model": {"name": "test_vit", "pretrained": False, "input_size": 128, "drop_path_rate": 0.0},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 2e-3, "layer_decay": None, "warmup_epochs": 1,
                  "early_stopping_patience": 0},
    }


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--size", default="2016x1512", help="photo size, WxH")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    import logging

    quiet = logging.getLogger("sustain")  # the run's own log lines would bury the result
    quiet.setLevel(logging.WARNING)

    from sustain.config import config_from_dict
    from sustain.data.image_cache import for_config
    from sustain.deploy.loading import load_checkpoint_model
    from sustain.evaluate import read_manifest_split
    from sustain.training.engine import train

    with tempfile.TemporaryDirectory(prefix="bench_cache_agreement_") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        classes = photo_lake(tmp / "lake", args.per_class, size)
        generate = time.perf_counter() - t
        cfg = config_from_dict(run_config(tmp, classes, args.epochs))
        t = time.perf_counter()
        result = train(cfg)
        train_seconds = time.perf_counter() - t
        assert result.ok and result.best_checkpoint is not None
        loaded = load_checkpoint_model(result.best_checkpoint, "cpu")
        cache = for_config(cfg.data, int(loaded.data_config["input_size"][-1]), float(loaded.data_config["crop_pct"]))
        rows, sources = read_manifest_split(tmp / "run" / "manifest.csv", "val", loaded.taxonomy)
        cached, targets, paths = score(loaded, rows, sources, cache)
        original, targets_o, paths_o = score(loaded, rows, sources, None)
        assert paths == paths_o and np.array_equal(targets, targets_o)

    top_cached, top_original = cached.argmax(1), original.argmax(1)
    truth = targets.argmax(1)
    agree = float((top_cached == top_original).mean())
    report = {
        "photos": f"{len(PHOTOS)} classes x {args.per_class}, {size[0]}x{size[1]} JPEG q90",
        "model": "test_vit @128 px, random init", "epochs": args.epochs, "stored_side": cache.side,
        "val_images": int(len(paths)), "agreement": round(agree, 4),
        "disagreeing": int((top_cached != top_original).sum()),
        "max_probability_change": round(float(np.abs(cached - original).max()), 4),
        "mean_probability_change": round(float(np.abs(cached - original).mean()), 5),
        "val_accuracy_cached": round(float((top_cached == truth).mean()), 4),
        "val_accuracy_original": round(float((top_original == truth).mean()), 4),
        "best_val_acc_in_training": result.best_val_acc, "generate_seconds": round(generate, 1),
        "train_seconds": round(train_seconds, 1),
    }
    write_result(args.json, report, echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The inputs benchmarks generate for themselves: image folders, photos, untrained checkpoints and the demo lake.

Nothing here is downloaded: images are drawn (shapes on a textured ground,
random pixels, camera-like noise) or taken from scikit-image's bundled samples,
and models are randomly initialised (speed does not depend on the weights).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

CLASSES = ("plastic_water_bottles", "aluminum_soda_cans", "glass_beverage_bottles", "cardboard_boxes")


def make_folder(root: Path, image: tuple[int, int], count: int, seed: int = 0) -> None:
    """`count` JPEGs over CLASSES, 90% under train/ and 10% under val/: a shape per class on a textured ground."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = image
    small = (max(8, width // 8), max(8, height // 8))  # draw small, upsample: photo-like smoothness, fast
    for i in range(count):
        cls = i % len(CLASSES)
        split = "val" if i % 10 == 9 else "train"
        ground = rng.integers(0, 255, (small[1], small[0], 3), dtype=np.uint8)
        ground[:] = (ground * 0.3 + rng.integers(60, 200, 3) * 0.7).astype(np.uint8)
        x0, y0 = rng.integers(0, small[0] // 2), rng.integers(0, small[1] // 2)
        ground[y0:y0 + small[1] // 3 + cls * 2, x0:x0 + small[0] // 3] = (60 * cls + 30, 200 - 40 * cls, 90)
        img = Image.fromarray(ground).resize((width, height), Image.Resampling.BICUBIC)
        folder = root / split / CLASSES[cls]
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        (folder / f"{i:05d}.jpg").write_bytes(buf.getvalue())


def write_images(folder: Path, n: int, seed: int = 0, suffix: str = "png") -> list[Path]:
    """`n` random-pixel images of 200-400 px a side (phone photos, downscaled), for inference benchmarks."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = int(rng.integers(200, 400)), int(rng.integers(200, 400))  # phone-photo-ish, downscaled
        path = folder / f"img_{i:04d}.{suffix}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def sample_photos(folder: Path, width: int, height: int, n: int) -> list[Path]:
    """`n` JPEGs of real photographs (scikit-image's samples) scaled to width×height, with sensor noise."""
    import numpy as np
    from PIL import Image
    from skimage import data as samples

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photos = [samples.astronaut(), samples.coffee(), samples.chelsea(), samples.rocket()]
    paths = []
    for i in range(n):
        img = Image.fromarray(photos[i % len(photos)]).resize((width, height), Image.Resampling.BICUBIC)
        pixels = np.asarray(img, dtype=np.int16) + rng.integers(-4, 5, (height, width, 3), dtype=np.int16)
        path = folder / f"photo_{i:03d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def camera_photos(folder: Path, count: int, size: tuple[int, int] = (4032, 3024)) -> list[str]:
    """Camera-like JPEGs: smooth shapes from a small drawing, upsampled, with sensor noise; quality 92."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = rng.integers(0, 255, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-4, 5, img.shape, dtype=np.int16), 0, 255).astype(np.uint8)
        path = folder / f"photo_{i:03d}.jpg"
        Image.fromarray(img).save(path, "JPEG", quality=92)
        paths.append(str(path))
    return paths


def write_checkpoint(out: Path, model_name: str, size: int) -> None:
    """A best.pth of an untrained timm model in `out`, as a training run writes it (for inference benchmarks)."""
    import timm
    from timm.data import resolve_model_data_config

    from sustain.taxonomy import build_taxonomy
    from sustain.training.checkpoints import save_best, state_dict_copy

    taxonomy = build_taxonomy()
    kwargs = {"img_size": size, "drop_path_rate": 0.0}
    model = timm.create_model(model_name, pretrained=False, num_classes=taxonomy.num_classes, **kwargs)
    cfg = resolve_model_data_config(model)
    meta = {**taxonomy.to_dict(), "model_name": model_name, "num_classes": taxonomy.num_classes,
            "input_size": [3, size, size], "mean": list(cfg["mean"]), "std": list(cfg["std"]),
            "interpolation": cfg["interpolation"], "crop_pct": cfg["crop_pct"], "model_kwargs": kwargs,
            "epoch": 0, "val_acc": 0.0, "manifest_hash": "benchmark"}
    save_best(out, state_dict_copy(model), meta)


def ensure_lake(path: Path | None) -> Path:
    """`path` if it is a folder, else a fresh demo lake (`sustain data demo`, seed 0) in a temporary folder."""
    if path is not None and path.is_dir():
        return path
    from sustain.data.demo import make_demo_lake

    target = path or Path(tempfile.mkdtemp(prefix="bench_lake_")) / "demo"
    make_demo_lake(target, seed=0)
    return target

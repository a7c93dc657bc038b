"""Lakes for the crossval tests: two sources, near duplicates across them, a shifted source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from engine_helpers import TINY_CLASSES, make_tiny_lake, tiny_config_dict
from PIL import Image

ORANGE = (255, 140, 0)


def two_source_lake(root: Path, per_class: int = 6, copies: int = 2, tint: bool = False,
                    classes: list[str] = TINY_CLASSES) -> Path:
    """`tiny/` (make_tiny_lake) and `other/`: its own images of every class (seed 1), plus, per class, resized copies of `tiny`'s first
    `copies` images (near duplicates across the sources). With `tint`, `other`'s own images are
    blended 60% with orange: a visibly shifted source whose classes stay apart from each other."""
    make_tiny_lake(root, classes=classes, per_class=per_class)
    own = make_tiny_lake(root / "_other", classes=classes, per_class=per_class, seed=1) / "tiny"
    for name in classes:
        folder = root / "other" / name
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted((own / name).glob("*.png")):
            with Image.open(path) as img:
                (Image.blend(img.convert("RGB"), Image.new("RGB", img.size, ORANGE), 0.6) if tint else img
                 ).save(folder / path.name)
        for i in range(copies):
            with Image.open(root / "tiny" / name / f"img_{i:03d}.png") as img:
                img.resize((40, 40), Image.Resampling.BICUBIC).save(folder / f"copy_{i:03d}.png")
    return root


def two_source_config(root: Path, output_dir: Path, **sections) -> dict:
    raw = tiny_config_dict(root, output_dir, **sections)
    raw["data"]["sources"] = [{"name": "tiny", "root": "tiny", "label_map": "identity"},
                              {"name": "other", "root": "other", "label_map": "identity"}]
    raw["tracking"] = {"tensorboard": False}
    return raw


def oof_by_path(path: Path) -> dict[str, tuple[int, np.ndarray]]:
    from sustain.evaluate.crossval import load_oof

    sp, fold = load_oof(path)
    return {str(p): (int(f), sp.probs[i]) for i, (p, f) in enumerate(zip(sp.paths, fold, strict=True))}

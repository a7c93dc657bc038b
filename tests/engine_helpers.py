"""Small lakes and configs for the training-engine tests (tiny on purpose: 2 CPU cores).

`make_tiny_lake` writes real PNG files: each class has its own colour, each
image its own noise texture (so no two images are near-duplicates and the
split stays stratified), which a tiny ViT learns within a few epochs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

TINY_CLASSES = ["red", "green", "blue", "yellow", "cyan", "magenta"]
_COLOURS = {
    "red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220),
    "yellow": (230, 220, 40), "cyan": (40, 210, 220), "magenta": (210, 40, 200),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread, and two cores shared by several processes oversubscribe."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def make_tiny_lake(root: Path, classes: list[str] = TINY_CLASSES, per_class: int = 10, size: int = 32,
                   seed: int = 0) -> Path:
    """`root/tiny/<class>/img_<i>.png`; returns root. Idempotent for the same arguments."""
    rng = np.random.default_rng(seed)
    for name in classes:
        folder = root / "tiny" / name
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.array(_COLOURS[name], dtype=np.float32)
        for i in range(per_class):
            noise = rng.normal(0.0, 45.0, size=(size, size, 3))
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / f"img_{i:03d}.png")
    return root


def tiny_config_dict(lake_root: Path, output_dir: Path, classes: list[str] = TINY_CLASSES,
                     **sections: dict[str, Any]) -> dict[str, Any]:
    """A raw config for the tiny lake; keyword sections (train=..., guards=...) are merged in."""
    raw: dict[str, Any] = {
        "seed": 42,
        "output_dir": str(output_dir),
        "device": "cpu",
        "taxonomy": {"classes": list(classes), "bins": None, "sets": {}},
        "data": {
            "root": str(lake_root),
            "sources": [{"name": "tiny", "root": "tiny", "label_map": "identity"}],
            "augment": "light",
            "num_workers": 0,
            "ingest_workers": 1,
        },
        "model": {"name": "test_vit", "pretrained": False, "input_size": 32, "drop_path_rate": 0.0},
        "train": {"epochs": 2, "batch_size": 8, "lr": 2e-3, "layer_decay": None, "warmup_epochs": 0.5, "amp": "off",
                  "label_smoothing": 0.1, "early_stopping_patience": 0},
        "guards": {},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def tiny_config(lake_root: Path, output_dir: Path, **sections: dict[str, Any]):
    from sustain.config import config_from_dict

    return config_from_dict(tiny_config_dict(lake_root, output_dir, **sections))


def read_json(path: Path) -> Any:
    import json

    return json.loads(Path(path).read_text(encoding="utf-8"))


def deterministic_history(history: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The history without wall-clock entries, which differ between any two runs."""
    from sustain.artifacts import TIMING_KEYS

    return {k: v for k, v in history.items() if k not in TIMING_KEYS}


def run_sustain(args: list[str], *, timeout: float = 300, env: dict[str, str] | None = None,
                cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """`python -m sustain ARGS` in a fresh process (real exit codes, real signals)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([PYTHON, "-m", "sustain", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def write_yaml(path: Path, raw: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path

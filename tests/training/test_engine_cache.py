"""The image cache and the measured CPU plan inside a real training run."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import (
    _COLOURS,
    TINY_CLASSES,
    deterministic_history,
    one_thread,  # noqa: F401  (autouse fixture)
    tiny_config,
)
from PIL import Image

pytestmark = pytest.mark.slow


def jpeg_lake(root: Path, per_class: int = 6, size: int = 160) -> Path:
    """Photos larger than the stored size (input 32 px stores 37 px), so every image goes through the cache."""
    rng = np.random.default_rng(1)
    for name in TINY_CLASSES:
        folder = root / "tiny" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            small = np.clip(np.array(_COLOURS[name]) + rng.normal(0, 45, (size // 8, size // 8, 3)), 0, 255)
            img = Image.fromarray(small.astype(np.uint8)).resize((size, size * 3 // 4), Image.Resampling.BICUBIC)
            img.save(folder / f"img_{i:03d}.jpg", quality=90)
    return root


def test_cached_runs_are_the_same_with_any_worker_count_and_plan_their_cpu(tmp_path: Path, caplog) -> None:
    from sustain.training.engine import train

    lake = jpeg_lake(tmp_path / "lake")
    with caplog.at_level(logging.INFO, logger="sustain"):
        first = train(tiny_config(lake, tmp_path / "a", data={"num_workers": 0}))  # fills the cache
        second = train(tiny_config(lake, tmp_path / "b", data={"num_workers": 1}))  # reads it, in a worker
    assert first.ok and second.ok
    assert deterministic_history(first.history) == deterministic_history(second.history)
    entries = list((lake / ".sustain_cache" / "images").rglob("*.jpg"))
    assert len(entries) == 6 * 6  # one copy per image, shared by both runs
    side = int(re.search(r"Image cache: 36 images at (\d+) px", caplog.text).group(1))
    assert 32 < side <= 40  # the eval resize: ceil(32 / crop_pct)
    assert all(min(Image.open(p).size) == side for p in entries)
    assert "CPU plan: 1 compute thread(s), 0 loader worker(s)" in caplog.text  # the user's 0 workers are kept
    assert "CPU plan: 1 compute thread(s), 1 loader worker(s)" in caplog.text
    assert "threads capped at 1 by torch.set_num_threads" in caplog.text  # the test sets one thread


    # The data summary reports the cache's disk use (bytes, images, bytes per image), in
    # data_summary.json and in run.json's copy of it.
    from sustain.artifacts import DataSummary, RunRecord

    disk = sum(p.stat().st_size for p in entries)
    for out in (tmp_path / "a", tmp_path / "b"):
        recorded = DataSummary.read(out).image_cache
        assert recorded == {"directory": str(lake / ".sustain_cache" / "images"), "side": side,
                            "images": 36, "bytes": disk, "bytes_per_image": disk // 36}
        assert RunRecord.read(out).data_summary["image_cache"] == recorded

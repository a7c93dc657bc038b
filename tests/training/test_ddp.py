"""`torchrun --nproc_per_node=2 -m sustain train` on the CPU (gloo): completes, and validation counts
each sample exactly once, as a single process does (SPEC §8)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from engine_helpers import (
    PYTHON,
    REPO_ROOT,
    TINY_CLASSES,
    make_tiny_lake,
    one_thread,  # noqa: F401  (autouse fixture)
    read_json,
    tiny_config,
    tiny_config_dict,
    write_yaml,
)

pytestmark = pytest.mark.slow

CLASSES = TINY_CLASSES[:5]  # 5 val images: an odd count, which a padded DistributedSampler would miscount


def test_two_process_cpu_run_matches_single_process_validation_counts(tmp_path: Path) -> None:
    from sustain.training.engine import train

    lake = make_tiny_lake(tmp_path / "lake", classes=CLASSES)
    sections = {"train": {"epochs": 2}}
    config = write_yaml(tmp_path / "ddp.yaml", tiny_config_dict(lake, tmp_path / "ddp", classes=CLASSES, **sections))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "sustain", "train", "--config", str(config)],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    assert ddp.stdout.count("✓ Training completed successfully") == 1  # only rank 0 prints
    assert ddp.stdout.count("✅ Pre-training sanity check passed!") == 1

    single = train(tiny_config(lake, tmp_path / "single", classes=CLASSES, **sections))

    ddp_history = read_json(tmp_path / "ddp" / "metrics_history.json")
    val_images = sum(1 for row in (tmp_path / "single" / "manifest.csv").read_text().splitlines() if ",val," in row)
    assert val_images == 5
    assert ddp_history["val_samples"] == single.history["val_samples"] == [5, 5]
    assert ddp_history["epoch"] == [1, 2]
    # The train split is sharded: 40 images / 2 ranks = 20 per rank = 2 full batches of 8 per epoch.
    last = torch.load(tmp_path / "ddp" / "last.pth", weights_only=True)
    assert last["guard"]["totals"]["steps"] == 2 * 2
    assert len(last["rng"]) == 2  # each rank's RNG states, for an exact resume of each
    report = read_json(tmp_path / "ddp" / "classification_report.json")
    assert report["n_fine"] + report["n_set"] == 5


def test_skipped_steps_stay_in_lockstep_across_ranks(tmp_path: Path) -> None:
    """A non-finite loss on one step skips that backward on every rank (no DDP hang), with accumulation."""
    lake = make_tiny_lake(tmp_path / "lake", classes=CLASSES)
    raw = tiny_config_dict(lake, tmp_path / "ddp", classes=CLASSES, train={"epochs": 1, "batch_size": 4,
                                                                             "accum_steps": 2},
                           guards={"inject_nonfinite_loss": [1]})
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "sustain", "train", "--config", str(write_yaml(tmp_path / "c.yaml", raw))],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    assert ddp.stdout.count("Non-finite loss at step 1 (epoch 1): step skipped") == 1
    history = read_json(tmp_path / "ddp" / "metrics_history.json")
    assert history["skipped"] == [0.2]  # 20 images per rank = 5 steps of 4, one skipped
    assert history["health"] == ["warning"]
    assert history["val_samples"] == [5]

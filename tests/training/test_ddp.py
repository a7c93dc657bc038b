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


# --------------------------------------------------------------------------- replicas proven in sync

PROBE = Path(__file__).resolve().parent / "ddp_probe.py"


def _torchrun_probe(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(PROBE),
                           *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _rank_files(out: Path, suffix: str) -> list:
    if suffix == "pt":
        return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return [read_json(out / f"rank{r}.json") for r in (0, 1)]


def _bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_replicas_on_different_data_stay_bitwise_equal_and_equal_one_process_on_the_union(tmp_path: Path) -> None:
    """Sustain's DDP wrapper and guarded step, 4 steps, each rank on its own batches: the ranks' weights are
    bitwise equal, and equal (to float rounding) to one process that accumulates both ranks' batches."""
    _torchrun_probe("sync", str(tmp_path))
    rank0, rank1 = (r["model"] for r in _rank_files(tmp_path, "pt"))
    saved = torch.load(tmp_path / "single.pt", weights_only=True)
    single, initial = saved["model"], saved["initial"]
    assert _bitwise_equal(rank0, rank1) == []
    for name, value in rank0.items():
        assert torch.allclose(value, single[name], rtol=1e-4, atol=1e-6), name
    # The steps moved the weights far beyond that tolerance, so the comparison has something to see.
    assert max(float((rank0[k] - initial[k]).abs().max()) for k in rank0) > 1e-2


def test_engine_ranks_agree_on_weights_ema_and_a_skip_that_only_one_rank_saw(tmp_path: Path) -> None:
    """`sustain train` under torchrun with EMA, and a non-finite loss on rank 1 only at step 1: rank 0 skips
    that step too, and after 2 epochs every parameter and every EMA weight is bitwise equal across ranks."""
    lake = make_tiny_lake(tmp_path / "lake", classes=CLASSES)
    raw = tiny_config_dict(lake, tmp_path / "run", classes=CLASSES,
                           train={"epochs": 2, "batch_size": 4, "ema": True, "ema_decay": 0.9})
    config = write_yaml(tmp_path / "c.yaml", raw)
    _torchrun_probe("train", str(config), str(tmp_path), "1=guards.inject_nonfinite_loss=[1]")
    (pt0, pt1), (js0, js1) = _rank_files(tmp_path, "pt"), _rank_files(tmp_path, "json")
    assert len(pt0["epochs"]) == len(pt1["epochs"]) == 2
    for epoch0, epoch1 in zip(pt0["epochs"], pt1["epochs"], strict=True):  # at the end of each epoch
        assert _bitwise_equal(epoch0["model"], epoch1["model"]) == []
        assert _bitwise_equal(epoch0["ema"], epoch1["ema"]) == []
        assert _bitwise_equal(epoch0["model"], epoch0["ema"]) != []  # the EMA is its own average, not the weights
    # 20 images per rank = 5 steps of 4 per epoch; rank 0's loss was finite, yet it skipped with rank 1.
    assert js0["skipped"] == js1["skipped"] == [0.2, 0.0]
    assert js0["ok"] and js1["ok"]


def test_early_stopping_stops_every_rank_at_the_same_epoch(tmp_path: Path) -> None:
    """No gain in val accuracy (a learning rate too small to move it): both ranks stop after epoch 2 of 4."""
    lake = make_tiny_lake(tmp_path / "lake", classes=CLASSES)
    raw = tiny_config_dict(lake, tmp_path / "run", classes=CLASSES,
                           train={"epochs": 4, "batch_size": 4, "lr": 1e-9, "early_stopping_patience": 1,
                                  "monitor": "val_acc"})
    _torchrun_probe("train", str(write_yaml(tmp_path / "c.yaml", raw)), str(tmp_path))
    js0, js1 = _rank_files(tmp_path, "json")
    assert js0["epochs_completed"] == js1["epochs_completed"] == 2
    assert js0["stop_reason"] == js1["stop_reason"] and js0["stop_reason"].startswith("early stopping")


# --------------------------------------------------------------------------- two nodes (torchrun --nnodes 2)


def _two_nodes(*sustain_args: str) -> list[tuple[int, str]]:
    """`torchrun --nnodes 2 --nproc_per_node 1 --rdzv-backend c10d` twice on localhost: two node processes
    that meet at one rendezvous, as on two machines. Returns each node's exit code and output."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend",
           "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", f"sustain-test-{port}", "--max-restarts",
           "0", "-m", "sustain", *sustain_args]
    nodes = [subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=400)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    return [(node.returncode, out) for node, out in zip(nodes, outputs, strict=True)]


def test_two_nodes_train_to_the_end_and_resume_exactly(tmp_path: Path) -> None:
    """Two torchrun nodes (c10d rendezvous) train a tiny run to the end; the same run killed after epoch 1 on
    both nodes and resumed under two nodes ends with the same history and bitwise the same weights."""
    from engine_helpers import deterministic_history

    lake = make_tiny_lake(tmp_path / "lake", classes=CLASSES)
    common = {"train": {"epochs": 2, "batch_size": 4}}
    full = write_yaml(tmp_path / "full.yaml", tiny_config_dict(lake, tmp_path / "full", classes=CLASSES, **common))
    nodes = _two_nodes("train", "--config", str(full))
    assert [rc for rc, _ in nodes] == [0, 0], "\n".join(out[-3000:] for _, out in nodes)
    assert sum(out.count("✓ Training completed successfully") for _, out in nodes) == 1  # rank 0 only
    assert read_json(tmp_path / "full" / "run.json")["device"]["world_size"] == 2

    crash_raw = tiny_config_dict(lake, tmp_path / "crash", classes=CLASSES, **common)
    crash = write_yaml(tmp_path / "crash.yaml", {**crash_raw, "guards": {"debug_kill_after_epoch": 1}})
    assert all(rc != 0 for rc, _ in _two_nodes("train", "--config", str(crash)))
    assert read_json(tmp_path / "crash" / "metrics_history.json")["epoch"] == [1]

    resumed = _two_nodes("train", "--config", str(write_yaml(tmp_path / "resume.yaml", crash_raw)), "--resume", "auto")
    assert [rc for rc, _ in resumed] == [0, 0], "\n".join(out[-3000:] for _, out in resumed)
    expected = deterministic_history(read_json(tmp_path / "full" / "metrics_history.json"))
    assert deterministic_history(read_json(tmp_path / "crash" / "metrics_history.json")) == expected
    full_last = torch.load(tmp_path / "full" / "last.pth", weights_only=True)
    resumed_last = torch.load(tmp_path / "crash" / "last.pth", weights_only=True)
    assert [k for k, v in full_last["model"].items() if not torch.equal(v, resumed_last["model"][k])] == []

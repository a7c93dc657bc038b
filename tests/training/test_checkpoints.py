"""Checkpoint files: atomic, plain, weights_only; the best is a true copy and the only one kept (SPEC §7)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sustain.artifacts import BEST_GLOB
from sustain.errors import UsageError
from sustain.model import load_checkpoint, save_checkpoint
from sustain.training.checkpoints import save_best, state_dict_copy
from sustain.training.resume import check_resume_compatible, resolve_resume
from sustain.training.rng import capture_rng_state, restore_rng_state


def test_round_trip_keeps_tensors_and_plain_types(tmp_path: Path) -> None:
    state = {"kind": "last", "epoch": 3, "lr": 0.5, "flag": True, "none": None,
             "model": {"w": torch.arange(4.0)}, "history": {"val_acc": [0.1, 0.2]},
             "rng": capture_rng_state()}
    path = save_checkpoint(tmp_path / "last.pth", state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["history"] == state["history"] and loaded["epoch"] == 3 and loaded["none"] is None
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_objects_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"checkpoint\['meta'\]\['path'\] is a PosixPath"):
        save_checkpoint(tmp_path / "x.pth", {"meta": {"path": Path("/tmp")}})
    with pytest.raises(TypeError, match="function"):
        save_checkpoint(tmp_path / "x.pth", {"fn": (lambda: 0)})
    assert not (tmp_path / "x.pth").exists()


class _Payload:
    marker: Path

    def __reduce__(self):
        return (open, (str(_Payload.marker), "w"))


def test_a_checkpoint_with_a_pickled_callable_is_refused_and_not_executed(tmp_path: Path) -> None:
    _Payload.marker = tmp_path / "payload_ran"
    evil = tmp_path / "last.pth"
    torch.save({"kind": "last", "model": {}, "hook": _Payload()}, evil)
    with pytest.raises(UsageError) as err:
        load_checkpoint(evil)
    assert "Refusing to load checkpoint" in str(err.value) and str(evil) in str(err.value)
    assert not _Payload.marker.exists()


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "last.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="Refusing to load checkpoint"):
        load_checkpoint(bad)


def _meta(epoch: int, acc: float) -> dict:
    return {"model_name": "m", "num_classes": 2, "classes": ["a", "b"], "bins": None, "sets": {},
            "input_size": [3, 8, 8], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
            "crop_pct": 1.0, "model_kwargs": {}, "manifest_hash": "h", "epoch": epoch, "val_acc": acc}


def test_only_the_current_best_is_kept_and_exported(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    first = save_best(tmp_path, state_dict_copy(model), _meta(1, 0.5))
    assert first.name == "best_model_epoch1_acc50.00.pth"
    with torch.no_grad():
        model.weight.add_(1.0)
    second = save_best(tmp_path, state_dict_copy(model), _meta(3, 0.8125))
    assert second.name == "best_model_epoch3_acc81.25.pth"
    assert [p.name for p in tmp_path.glob(BEST_GLOB)] == [second.name]
    exported = load_file(str(tmp_path / "best_model.safetensors"))
    assert torch.equal(exported["weight"], model.weight)
    meta = json.loads((tmp_path / "best_model.json").read_text())
    assert meta["epoch"] == 3 and meta["classes"] == ["a", "b"]
    best = load_checkpoint(second)
    assert best["kind"] == "best" and torch.equal(best["model"]["weight"], model.weight)


def test_best_weights_are_copies_not_live_references() -> None:
    model = torch.nn.Linear(2, 2)
    copy = state_dict_copy(model)
    snapshot = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.mul_(0).add_(7)  # training goes on after the best epoch
    assert torch.equal(copy["weight"], snapshot)


def test_rng_state_round_trip_restores_every_stream(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = save_checkpoint(tmp_path / "rng.pth", {"rng": capture_rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_resume_target_resolution(tmp_path: Path) -> None:
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None  # nothing to resume: a new run
    (tmp_path / "last.pth").write_bytes(b"x")
    assert resolve_resume("auto", tmp_path) == tmp_path / "last.pth"
    assert resolve_resume(str(tmp_path), tmp_path) == tmp_path / "last.pth"
    with pytest.raises(UsageError, match="not found"):
        resolve_resume(str(tmp_path / "other.pth"), tmp_path)


def test_resume_compatibility_names_what_changed(tmp_path: Path) -> None:
    state = {"kind": "last", "classes": ["a", "b", "c"], "manifest_hash": "h1"}
    check_resume_compatible(state, ["a", "b", "c"], "h1", tmp_path / "last.pth")
    with pytest.raises(UsageError, match=r"class list changed \(added \['d'\]; removed \['c'\]\)"):
        check_resume_compatible(state, ["a", "b", "d"], "h1", tmp_path / "last.pth")
    with pytest.raises(UsageError, match="same classes, different order"):
        check_resume_compatible(state, ["b", "a", "c"], "h1", tmp_path / "last.pth")
    with pytest.raises(UsageError, match="data manifest changed"):
        check_resume_compatible(state, ["a", "b", "c"], "h2", tmp_path / "last.pth")
    with pytest.raises(UsageError, match="not a resumable checkpoint"):
        check_resume_compatible({**state, "kind": "best"}, ["a", "b", "c"], "h1", tmp_path / "x.pth")
    with pytest.raises(UsageError, match="checkpoint format 99; this Sustain reads up to 2"):
        check_resume_compatible({**state, "format": 99}, ["a", "b", "c"], "h1", tmp_path / "last.pth")


def test_the_training_state_round_trips_through_last_pth(tmp_path: Path) -> None:
    """What the loop and the guards write into last.pth is exactly what they read back."""
    from sustain.config import GuardConfig
    from sustain.device import plan_precision
    from sustain.training.guards import Guards
    from sustain.training.loop_state import BestScore, LoopState

    state = LoopState(epoch=3, updates=17, micro_steps=34, bad_epochs=1, early_stopped=True,
                      stop_reason="early stopping", step=2, partial=[{"seen": 8}],
                      health=[{"epoch": 1, "verdict": "healthy"}], events=[{"event": "resumed"}])
    state.best = BestScore(score=0.5, epoch=2, val_acc=0.5, macro_f1=0.4, path="best.pth")
    state.history.epoch.extend([1, 2, 3])
    guards = Guards(GuardConfig(), "cpu", plan_precision("cpu", "off", False), amp_on=False)
    for step in range(3):  # three non-finite steps in a row: the LR is halved
        guards.on_nonfinite(1, step, "loss")
    assert guards.state.lr_halved and guards.state.lr_factor == 0.5
    path = save_checkpoint(tmp_path / "last.pth", {**state.state_dict(), "guard": guards.state_dict()})
    saved = torch.load(path, weights_only=True)

    back = LoopState()
    back.load_state_dict(saved)
    assert back == state
    again = Guards(GuardConfig(), "cpu", plan_precision("cpu", "off", False), amp_on=False)
    again.load_state_dict(saved["guard"], None)
    assert again.state == guards.state
    again.load_state_dict(saved["guard"], None, keep_lr_factor=False)  # a new train.lr drops the halving
    assert again.state.lr_factor == 1.0 and not again.state.lr_halved

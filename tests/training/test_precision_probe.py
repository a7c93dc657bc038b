"""The bf16 probe of `train.amp: auto` on CPUs with native bf16: what it catches, what it leaves, its cache."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from engine_helpers import (
    make_tiny_lake,
    one_thread,  # noqa: F401  (autouse fixture)
    read_json,
    run_sustain,
    tiny_config_dict,
    write_yaml,
)
from torch import nn

from sustain.deploy.model_card import build_model_card
from sustain.device import Bf16Probe, detect_backends, plan_precision
from sustain.training.losses import PartialLabelLoss
from sustain.training.precision import CACHE_FILE, probe_figures, probe_key, run_probe


class RoundedAway(nn.Module):
    """Logits that share a large offset: bf16's 8-bit mantissa (steps of 8 near 1000) rounds their differences away."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(features, classes)
        with torch.no_grad():
            self.head.weight.mul_(5.0)
            self.head.bias.fill_(1000.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


def batch(classes: int = 5, n: int = 16, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=g)
    return images, nn.functional.one_hot(torch.randint(0, classes, (n,), generator=g), classes).float()


def test_probe_catches_a_layer_that_bf16_breaks_and_auto_keeps_fp32() -> None:
    torch.manual_seed(0)
    images, targets = batch()
    probe = run_probe(RoundedAway(3 * 8 * 8, 5), images, targets, PartialLabelLoss())
    plan = plan_precision("cpu", "auto", False, cpu_bf16="AVX512-BF16", probe=probe)
    assert probe.loss_rel_diff > 0.05
    assert not plan.autocast and "bf16 changed the loss" in plan.line


def test_probe_leaves_the_model_as_it_was_and_agrees_on_a_healthy_net() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Dropout(0.2),
                          nn.Linear(8 * 6 * 6, 5)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, targets = batch()
    probe = run_probe(model, images, targets, PartialLabelLoss(label_smoothing=0.1))
    assert probe.loss_rel_diff < 0.02 and probe.grad_cosine > 0.98  # same weights and dropout masks in both passes
    assert not model.training  # its mode, BatchNorm statistics, weights and gradients as before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_the_gradient_cosine_sums_in_float64() -> None:
    from sustain.training.precision import _cosine

    x = torch.tensor([2.0**24, 1.0, -(2.0**24)])  # float32: 2**24 + 1 rounds back to 2**24
    ones = torch.ones(3)
    assert _cosine([x], [ones]) == 1.0 / ((2.0**49 + 1) ** 0.5 * 3**0.5)  # float32 sums would give 0
    assert _cosine([x, ones], [x, ones]) == pytest.approx(1.0) and _cosine([ones], [-ones]) == pytest.approx(-1.0)
    assert math.isnan(_cosine([torch.zeros(3)], [ones]))
    with pytest.raises(ValueError):  # a parameter with a gradient in one pass only
        _cosine([x, ones], [x])


def test_the_probe_times_each_precision_on_its_own() -> None:
    torch.manual_seed(0)
    images, targets = batch()
    probe = run_probe(RoundedAway(3 * 8 * 8, 5), images, targets, PartialLabelLoss())
    assert 0 < probe.fp32_seconds < 60 and 0 < probe.bf16_seconds < 60  # seconds of one step, not a clock reading
    assert probe.fp32_seconds != probe.bf16_seconds


def test_verdict_is_cached_per_model_size_and_cpu(tmp_path: Path) -> None:
    images, targets = batch()
    model = RoundedAway(3 * 8 * 8, 5)
    key = probe_key("rounded", 8, 16, "Some CPU")
    first, cached = probe_figures(model, images, targets, PartialLabelLoss(), cache_dir=tmp_path, key=key)
    assert not cached and (tmp_path / CACHE_FILE).is_file()
    again, cached = probe_figures(model, images, targets, PartialLabelLoss(), cache_dir=tmp_path, key=key)
    assert cached and again == first  # the same figures, not measured again
    other = probe_key("rounded", 8, 16, "Another CPU")
    assert not probe_figures(model, images, targets, PartialLabelLoss(), cache_dir=tmp_path, key=other)[1]


def test_the_cpu_auto_plan_reads_the_cached_verdict_for_this_model_size_batch_and_cpu(tmp_path: Path,
                                                                                     sustain_log) -> None:
    from engine_helpers import tiny_config

    from sustain.device import Backends
    from sustain.training.precision import probe_precision, store_probe

    cfg = tiny_config(tmp_path / "lake", tmp_path / "run", data={"cache_dir": str(tmp_path / "cache")},
                      train={"amp": "auto"})
    images, targets = batch()
    passing = Bf16Probe(loss_fp32=1.8, loss_bf16=1.8, grad_cosine=0.9991234567, fp32_seconds=0.2, bf16_seconds=0.1)
    store_probe(tmp_path / "cache", probe_key(cfg.model.name, 8, 16, "Test CPU"), passing)
    here = Backends(cpu_bf16="AMX", cpu_name="Test CPU")
    plan = probe_precision(cfg, here, RoundedAway(3 * 8 * 8, 5), images, targets, PartialLabelLoss(), size=8)
    assert plan.label == "bf16 autocast" and plan.reason.startswith("AMX CPU, probe (cached): loss Δ 0.00%")
    assert sustain_log.messages == [f"🧮 Precision: bf16 autocast ({plan.reason})"]
    assert plan.params() == {"precision_reason": plan.reason, "bf16_probe_loss_fp32": 1.8,
                                  "bf16_probe_loss_bf16": 1.8, "bf16_probe_grad_cosine": 0.999123,
                                  "bf16_probe_fp32_seconds": 0.2, "bf16_probe_bf16_seconds": 0.1,
                                  "bf16_probe_cpu_bf16": "AMX", "bf16_probe_cached": True}
    assert plan_precision("cpu", "off", False).params() == {"precision_reason": "train.amp: off"}
    # Another CPU has no verdict yet: the probe runs (and catches the rounded-away logits), its verdict is stored.
    other = probe_precision(cfg, Backends(cpu_bf16="AMX", cpu_name="Other CPU"), RoundedAway(3 * 8 * 8, 5), images,
                            targets, PartialLabelLoss(), size=8)
    assert other.label == "fp32" and "bf16 changed the loss" in other.reason and "probe: loss" in other.reason
    assert probe_key(cfg.model.name, 8, 16, "Other CPU") in read_json(tmp_path / "cache" / CACHE_FILE)


def test_the_verdict_cache_keeps_every_key_makes_its_folder_and_says_when_it_cannot_be_read(tmp_path: Path,
                                                                                           sustain_log) -> None:
    import json

    from sustain.training.precision import cached_probe, store_probe

    passing = Bf16Probe(loss_fp32=1.8, loss_bf16=1.8, grad_cosine=0.999, fp32_seconds=0.2, bf16_seconds=0.1)
    assert cached_probe(None, "k") is None and cached_probe(tmp_path, "k") is None  # no cache, no file
    cache = tmp_path / "a" / "b"  # not there yet: made with its parents
    store_probe(cache, "one", passing)
    store_probe(cache, "two", dataclasses.replace(passing, grad_cosine=0.5))
    assert cached_probe(cache, "one") == passing and cached_probe(cache, "two").grad_cosine == 0.5
    assert cached_probe(cache, "three") is None
    assert sustain_log.messages == []  # a key not there yet is no warning
    (cache / CACHE_FILE).write_text("{not json", encoding="utf-8")
    try:
        json.loads("{not json")
    except ValueError as exc:
        error = exc
    assert cached_probe(cache, "one") is None
    store_probe(cache, "one", passing)  # the broken file stays as it is
    assert sustain_log.messages == [f"⚠️  bf16 probe cache {cache / CACHE_FILE} unreadable ({error}): probing again",
                               f"⚠️  bf16 probe verdict not cached at {cache / CACHE_FILE}: {error}"]


# --------------------------------------------------------------------------- training runs

NATIVE_BF16 = detect_backends().cpu_bf16


@pytest.fixture(scope="module")
def tiny_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lake(tmp_path_factory.mktemp("tiny_lake"))


@pytest.mark.slow
@pytest.mark.skipif(NATIVE_BF16 is None, reason="this CPU has no native bf16: auto never probes")
def test_auto_chooses_bf16_from_a_passing_verdict_and_the_guards_turn_it_off(tiny_lake: Path, tmp_path: Path) -> None:
    from sustain.device import cpu_model_name
    from sustain.training.precision import store_probe

    cache = tmp_path / "cache"
    passing = Bf16Probe(loss_fp32=1.8, loss_bf16=1.8, grad_cosine=0.999, fp32_seconds=0.2, bf16_seconds=0.1)
    store_probe(cache, probe_key("test_vit", 32, 8, cpu_model_name()), passing)
    raw = tiny_config_dict(tiny_lake, tmp_path / "run", train={"epochs": 1, "amp": "auto"},
                           data={"cache_dir": str(cache)},
                           guards={"escalate_after": 2, "inject_nonfinite_loss": [0, 1], "warn_pct": 100, "critical_pct": 100})
    result = run_sustain(["train", "--config", str(write_yaml(tmp_path / "c.yaml", raw))])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Precision: bf16 autocast ({NATIVE_BF16} CPU, probe (cached): loss Δ 0.00%" in result.stdout
    device = read_json(tmp_path / "run" / "run.json")["device"]
    assert device["precision"] == "bf16 autocast" and device["precision_plan"]["probe"]["cached"] is True
    assert device["amp_on_at_end"] is False  # the first escalation: mixed precision off, on the CPU
    assert "mixed precision turned off; training continues in fp32" in result.stdout
    run_json = read_json(tmp_path / "run" / "run.json")  # the model card says which precision and why
    card = build_model_card(read_json(tmp_path / "run" / "best_model.json"), {"run": run_json})
    assert f"- precision plan: {NATIVE_BF16} CPU, probe (cached)" in card


@pytest.mark.slow
@pytest.mark.skipif(NATIVE_BF16 is None, reason="this CPU has no native bf16: auto never probes")
def test_a_resume_trains_on_in_the_precision_the_run_chose_whatever_a_new_probe_finds(tiny_lake: Path,
                                                                                      tmp_path: Path) -> None:
    import signal

    from sustain.device import cpu_model_name
    from sustain.training.precision import store_probe

    cache, key = tmp_path / "cache", probe_key("test_vit", 32, 8, cpu_model_name())
    store_probe(cache, key, Bf16Probe(loss_fp32=1.8, loss_bf16=1.8, grad_cosine=0.999, fp32_seconds=0.2,
                                      bf16_seconds=0.1))
    raw = tiny_config_dict(tiny_lake, tmp_path / "run", train={"epochs": 2, "amp": "auto"},
                           data={"cache_dir": str(cache)})
    crash = write_yaml(tmp_path / "crash.yaml", {**raw, "guards": {"debug_kill_after_epoch": 1}})
    crashed = run_sustain(["train", "--config", str(crash)])
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    assert "Precision: bf16 autocast" in crashed.stdout
    # The next probe finds bf16 no faster (a busier machine, or the cache deleted and a noisier timing).
    store_probe(cache, key, Bf16Probe(loss_fp32=1.8, loss_bf16=1.8, grad_cosine=0.999, fp32_seconds=0.2,
                                      bf16_seconds=0.2))
    resumed = run_sustain(["train", "--config", str(write_yaml(tmp_path / "c.yaml", raw)), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Precision: bf16 autocast (as the run being resumed, whose plan was: {NATIVE_BF16} CPU" in resumed.stdout
    assert read_json(tmp_path / "run" / "run.json")["device"]["precision"] == "bf16 autocast"

"""Running a step in the precision plan's dtype, and choosing that dtype on a CPU.

The one autocast builder and images on the device in the step's memory layout;
and the start-up bf16 probe for `train.amp: auto` on a CPU with native bf16
(SPEC §6): one forward and backward of the sanity batch in fp32 and in bf16
autocast, from the same weights and the same random numbers: the two losses,
the cosine of the two gradients, and the time of a step in each after a
warm-up. The gates are `Bf16Probe.failure` (pure, in device.py). The verdict is
cached per model, input size, batch size, CPU and torch version in the decode
cache's folder, so a rerun does not pay for it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..data import cache_root
from ..device import Backends, Bf16Probe, PrecisionPlan, plan_precision
from ..utils import atomic_write_json


def autocast_context(device_type: str, precision: PrecisionPlan, *, enabled: bool) -> contextlib.AbstractContextManager:
    """The one way the engine builds autocast: the plan's dtype when enabled, else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=getattr(torch, precision.dtype))


def images_on_device(batch: Any, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = batch.images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


# --------------------------------------------------------------------------- the bf16 probe

log = logging.getLogger("sustain.training.engine")

CACHE_FILE = "bf16_probe.json"
_BF16 = PrecisionPlan(autocast=True, dtype="bfloat16", grad_scaler=False)
_FP32 = PrecisionPlan(autocast=False, dtype="float32", grad_scaler=False)


def probe_key(model_name: str, input_size: int, batch_size: int, cpu_name: str) -> str:
    return f"{model_name}|{input_size}px|batch {batch_size}|{cpu_name}|torch {torch.__version__}"


def cached_probe(cache_dir: Path | None, key: str) -> Bf16Probe | None:
    """The verdict an earlier run stored for `key`, or None (no cache, no entry, or an unreadable file)."""
    if cache_dir is None or not (cache_dir / CACHE_FILE).is_file():
        return None
    try:
        entry = json.loads((cache_dir / CACHE_FILE).read_text(encoding="utf-8")).get(key)
        return Bf16Probe(**entry) if entry else None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("⚠️  bf16 probe cache %s unreadable (%s): probing again", cache_dir / CACHE_FILE, exc)
        return None


def store_probe(cache_dir: Path | None, key: str, probe: Bf16Probe) -> None:
    if cache_dir is None:
        return
    path = cache_dir / CACHE_FILE
    try:
        entries = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        entries[key] = probe.to_dict()
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, entries)
    except (OSError, ValueError) as exc:  # the verdict still holds for this run; the next one probes again
        log.warning("⚠️  bf16 probe verdict not cached at %s: %s", path, exc)


@contextlib.contextmanager
def trial_passes(model: nn.Module) -> Iterator[None]:
    """Trial training passes that leave no trace: in train mode, as the steps run (dropout, drop
    path, BatchNorm statistics), on a forked CPU RNG; the BatchNorm buffers, the gradients and the
    mode are put back afterwards (the bf16 probe, the CPU plan's timing)."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def run_probe(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, loss_fn: nn.Module,
              timed_rounds: int = 2) -> Bf16Probe:
    """fp32 and bf16 from the same weights and random numbers; the model is left as it was
    (`trial_passes`). Timings alternate the two precisions after one warm-up pass each, and the
    fastest of `timed_rounds` counts (other processes' load on a shared machine only ever adds time)."""
    with trial_passes(model):
        rng = torch.get_rng_state()
        loss32, grads32, _ = _pass(model, images, targets, loss_fn, _FP32, rng)
        loss16, grads16, _ = _pass(model, images, targets, loss_fn, _BF16, rng)
        cosine = _cosine(grads32, grads16)
        del grads32, grads16
        seconds: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(timed_rounds):
            for plan in (_FP32, _BF16):
                seconds[plan.autocast].append(_pass(model, images, targets, loss_fn, plan, rng, keep=False)[2])
    return Bf16Probe(loss_fp32=loss32, loss_bf16=loss16, grad_cosine=cosine,
                     fp32_seconds=min(seconds[False]), bf16_seconds=min(seconds[True]))


def _pass(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, loss_fn: nn.Module, plan: PrecisionPlan,
          rng: torch.Tensor, keep: bool = True) -> tuple[float, list[torch.Tensor], float]:
    torch.set_rng_state(rng)
    model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    with autocast_context(images.device.type, plan, enabled=plan.autocast):
        loss = loss_fn(model(images), targets)
    loss.backward()
    seconds = time.perf_counter() - t
    grads = [p.grad.detach().float().clone() for p in model.parameters() if p.grad is not None] if keep else []
    return float(loss.detach()), grads, seconds


def _cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    dot = sum(float((x * y).sum(dtype=torch.float64)) for x, y in zip(a, b, strict=True))
    na = sum(float((x * x).sum(dtype=torch.float64)) for x in a) ** 0.5
    nb = sum(float((y * y).sum(dtype=torch.float64)) for y in b) ** 0.5
    return dot / (na * nb) if na > 0 and nb > 0 else float("nan")


def probe_figures(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, loss_fn: nn.Module, *,
                  cache_dir: Path | None, key: str) -> tuple[Bf16Probe, bool]:
    """The probe's figures for `key`: the cached ones, else measured now and cached. True: from the cache."""
    cached = cached_probe(cache_dir, key)
    if cached is not None:
        return cached, True
    probe = run_probe(model, images, targets, loss_fn)
    store_probe(cache_dir, key, probe)
    return probe, False


def probe_precision(cfg: Config, backends: Backends, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                    loss_fn: nn.Module, size: int) -> PrecisionPlan:
    """The CPU's `amp: auto` plan: bf16 where the probe (cached or run now) passed; the line says why."""
    key = probe_key(cfg.model.name, size, len(images), backends.cpu_name)
    probe, cached = probe_figures(model, images, targets, loss_fn, cache_dir=cache_root(cfg.data), key=key)
    plan = plan_precision("cpu", cfg.train.amp, False, cpu_bf16=backends.cpu_bf16, probe=probe, probe_cached=cached)
    log.info(plan.line)
    return plan

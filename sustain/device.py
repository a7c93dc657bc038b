"""Device and precision plans (SPEC §6).

The decisions are pure functions of what the machine offers (`Backends`), so
the CUDA and MPS branches can be tested on any machine. `detect_backends()` is
the only function here that asks the hardware.

Order for `device: auto`: CUDA, then MPS, then CPU.
- CUDA: bf16 autocast where the GPU supports it, else fp16 with a GradScaler;
  TF32 matmuls; channels_last for convolutional models; pinned memory.
- MPS: fp32 unless AMP is asked for; no pinned memory; never gradient
  checkpointing; DataLoader workers default to 0 inside Jupyter on macOS
  (spawned workers there are slow to start and fragile).
- CPU: bf16 autocast (no scaler) when AMP is asked for, and under `amp: auto` when
  the CPU has native bf16 (AMX or AVX512-BF16) and the start-up probe
  (training/precision.py) found bf16 as accurate and faster; else fp32.
  channels_last for convolutional models on x86 (AVX2/AVX512).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

DeviceType = Literal["cuda", "mps", "cpu"]


@dataclass(frozen=True)
class Backends:
    """What the machine offers."""

    cuda: bool = False
    cuda_bf16: bool = False
    cuda_name: str | None = None
    cuda_count: int = 0
    mps: bool = False
    mps_built: bool = False
    cpu_isa: str = "DEFAULT"  # ATen's CPU vector ISA: AVX2, AVX512, ... (torch.backends.cpu.get_cpu_capability)
    cpu_bf16: str | None = None  # native bf16 of the CPU: "AMX", "AVX512-BF16" or None (cpu_native_bf16)
    cpu_name: str = "CPU"


@dataclass(frozen=True)
class DevicePlan:
    type: DeviceType
    name: str  # human-readable accelerator name
    pin_memory: bool
    allow_tf32: bool
    grad_checkpointing_ok: bool

    @property
    def line(self) -> str:
        """The device line of the startup sequence."""
        return f"🖥️  Using device: {self.type} ({self.name})"


@dataclass(frozen=True)
class PrecisionPlan:
    autocast: bool
    dtype: Literal["bfloat16", "float16", "float32"]
    grad_scaler: bool
    reason: str = ""  # why this precision, in words (the console line, run.json, the model card)
    probe: dict[str, Any] | None = field(default=None, compare=False)  # the bf16 probe's figures, if one ran

    @property
    def label(self) -> str:
        if not self.autocast:
            return "fp32"
        return f"{'bf16' if self.dtype == 'bfloat16' else 'fp16'} autocast" + (" + GradScaler" if self.grad_scaler else "")

    @property
    def line(self) -> str:
        return f"🧮 Precision: {self.label}" + (f" ({self.reason})" if self.reason else "")

    def record(self) -> dict[str, Any]:
        """The plan for run.json (`device.precision_plan`)."""
        return {"label": self.label, "reason": self.reason, "probe": self.probe}

    def params(self) -> dict[str, Any]:
        """The plan as tracking params: flat scalars."""
        out: dict[str, Any] = {"precision_reason": self.reason}
        for k, v in (self.probe or {}).items():
            out[f"bf16_probe_{k}"] = round(v, 6) if isinstance(v, float) else v
        return out


# The bf16 probe's gates (training/precision.py). On a batch of 32, bf16 against fp32 of
# freshly initialised nets measured loss differences under 0.1% and gradient cosines of 0.987
# (test_resnet), 0.994 (resnet18), 0.9999 (convnext_atto) and 1.0000 (eva02_tiny): BatchNorm
# nets at initialisation sit lowest, hence 0.98 rather than 0.99. A logit layer that bf16 rounds
# away (tests/training/test_precision_probe.py) changed the loss by 7.6%.
PROBE_LOSS_RTOL = 0.02
PROBE_MIN_COSINE = 0.98
PROBE_MIN_SPEEDUP = 1.05  # below it bf16 is not worth its rounding (timing noise on a shared machine)


@dataclass(frozen=True)
class Bf16Probe:
    """One fp32 and one bf16 forward/backward of the sanity batch: what they gave and took."""

    loss_fp32: float
    loss_bf16: float
    grad_cosine: float
    fp32_seconds: float
    bf16_seconds: float

    @property
    def speedup(self) -> float:
        return self.fp32_seconds / self.bf16_seconds if self.bf16_seconds > 0 else 0.0

    @property
    def loss_rel_diff(self) -> float:
        return abs(self.loss_bf16 - self.loss_fp32) / max(abs(self.loss_fp32), 1e-12)

    def failure(self) -> str | None:
        """Why bf16 must not be used, or None when it passed every gate."""
        if not (math.isfinite(self.loss_bf16) and math.isfinite(self.grad_cosine)):
            return f"bf16 gave a non-finite loss or gradient (loss {self.loss_bf16})"
        if self.loss_rel_diff > PROBE_LOSS_RTOL:
            return (f"bf16 changed the loss by {self.loss_rel_diff:.1%} ({self.loss_fp32:.4f} → {self.loss_bf16:.4f}), "
                    f"over {PROBE_LOSS_RTOL:.0%}")
        if self.grad_cosine < PROBE_MIN_COSINE:
            return f"bf16 turned the gradient: cosine {self.grad_cosine:.3f} to fp32's, under {PROBE_MIN_COSINE}"
        if self.speedup < PROBE_MIN_SPEEDUP:
            return f"bf16 is not faster enough here ({self.speedup:.2f}×, under {PROBE_MIN_SPEEDUP}×): a step took {self.bf16_seconds * 1e3:.0f} ms against fp32's " \
                   f"{self.fp32_seconds * 1e3:.0f} ms"
        return None

    def summary(self) -> str:
        return (f"loss Δ {self.loss_rel_diff:.2%}, gradient cosine {self.grad_cosine:.4f}, step "
                f"{self.fp32_seconds * 1e3:.0f} → {self.bf16_seconds * 1e3:.0f} ms ({self.speedup:.2f}×)")

    def to_dict(self) -> dict[str, float]:
        return {"loss_fp32": self.loss_fp32, "loss_bf16": self.loss_bf16, "grad_cosine": self.grad_cosine,
                "fp32_seconds": self.fp32_seconds, "bf16_seconds": self.bf16_seconds}


def cpu_native_bf16(flags: Iterable[str]) -> str | None:
    """The CPU's native bf16 from its feature flags (/proc/cpuinfo names): AMX first, then AVX512-BF16."""
    found = {f.strip().lower() for f in flags}
    if "amx_bf16" in found:
        return "AMX"
    if "avx512_bf16" in found:
        return "AVX512-BF16"
    return None


def wants_bf16_probe(device_type: str, amp: str, cpu_bf16: str | None) -> bool:
    """`amp: auto` on a CPU with native bf16: bf16 only if the probe agrees."""
    return amp == "auto" and device_type == "cpu" and cpu_bf16 is not None


def plan_device(requested: str, available: Backends) -> DevicePlan:
    """Pick the device: the one asked for, or the first of CUDA, MPS, CPU that exists."""
    if requested not in ("auto", "cuda", "mps", "cpu"):
        raise ConfigError("device", f"unknown device {requested!r}", "use auto, cuda, mps or cpu")
    if requested == "cuda" and not available.cuda:
        raise ConfigError("device", "CUDA was asked for but no CUDA GPU is available",
                          "use device: auto (or --set device=cpu), or install a CUDA build of torch")
    if requested == "mps" and not available.mps:
        why = "this torch build has MPS but the GPU is not available" if available.mps_built else "this torch build has no MPS support"
        raise ConfigError("device", f"MPS was asked for but {why}", "use device: auto or cpu; MPS needs macOS 12.3+ on Apple Silicon")

    if requested == "cuda" or (requested == "auto" and available.cuda):
        return DevicePlan("cuda", available.cuda_name or "CUDA GPU", pin_memory=True, allow_tf32=True,
                          grad_checkpointing_ok=True)
    if requested == "mps" or (requested == "auto" and available.mps):
        return DevicePlan("mps", "Apple Silicon GPU", pin_memory=False, allow_tf32=False, grad_checkpointing_ok=False)
    return DevicePlan("cpu", "CPU", pin_memory=False, allow_tf32=False, grad_checkpointing_ok=True)


def plan_precision(device_type: str, amp: str, bf16_supported: bool, *, cpu_bf16: str | None = None,
                   probe: Bf16Probe | None = None, probe_cached: bool = False) -> PrecisionPlan:
    """Autocast dtype and GradScaler use for a device and the `train.amp` setting (auto | on | off).

    On a CPU, `auto` is bf16 only with native bf16 (`cpu_bf16`) and a `probe` that passed."""
    if amp not in ("auto", "on", "off"):
        raise ConfigError("train.amp", f"unknown value {amp!r}", "use auto, on or off")
    if amp == "off":
        return PrecisionPlan(False, "float32", False, "train.amp: off")
    if amp == "auto" and device_type == "mps":
        return PrecisionPlan(False, "float32", False, "train.amp: auto keeps fp32 on MPS")
    if amp == "auto" and device_type == "cpu":
        return _plan_cpu_auto(cpu_bf16, probe, probe_cached)
    why = "train.amp: on" if amp == "on" else "train.amp: auto on CUDA"
    if device_type == "cpu" or bf16_supported:  # bf16 has fp32's range: no loss scaling needed
        return PrecisionPlan(True, "bfloat16", False, why)
    return PrecisionPlan(True, "float16", True, why + ", no bf16 on this device")


def _plan_cpu_auto(cpu_bf16: str | None, probe: Bf16Probe | None, cached: bool) -> PrecisionPlan:
    if cpu_bf16 is None:
        return PrecisionPlan(False, "float32", False, "this CPU has no native bf16 (AMX or AVX512-BF16)")
    if probe is None:
        return PrecisionPlan(False, "float32", False, f"{cpu_bf16} CPU, bf16 not probed")
    figures = {**probe.to_dict(), "cpu_bf16": cpu_bf16, "cached": cached}
    seen = f"probe{' (cached)' if cached else ''}: {probe.summary()}"
    failure = probe.failure()
    if failure:
        return PrecisionPlan(False, "float32", False, f"{failure}; {seen}", figures)
    return PrecisionPlan(True, "bfloat16", False, f"{cpu_bf16} CPU, {seen}", figures)


def resumed_precision(current: PrecisionPlan, saved: dict[str, Any] | None) -> PrecisionPlan:
    """The precision a resumed run trains in. Where this start's plan came from the bf16 probe
    (`amp: auto` on a CPU with native bf16) and the run being resumed trained on the CPU too, the
    saved precision stands: a new probe (its cache deleted, a noisier timing) must not switch the
    rest of a run to the other precision, which would also break the exact resume. Any other plan
    (`on`, `off`, another device) is this start's own."""
    if current.probe is None or not saved or saved.get("device") != "cpu":
        return current
    kept = PrecisionPlan(**saved["plan"])
    if kept == current:
        return current
    return dataclasses.replace(kept, reason=f"as the run being resumed, whose plan was: {kept.reason}")


def probed_step_seconds(plan: PrecisionPlan) -> float | None:
    """The bf16 probe's own timing of a training step (forward, loss, backward of the sanity batch, after
    a warm-up) in the precision it chose, where it ran in this process; None where it did not run or its
    verdict came from the cache (timed on another day's load). The CPU plan needs no timing of its own
    then: on camera photos the probe and the plan's three passes cost as much as a third of a short run."""
    figures = plan.probe
    if not figures or figures.get("cached"):
        return None
    return figures["bf16_seconds" if plan.autocast else "fp32_seconds"]


CHANNELS_LAST_CPU_ISAS = ("AVX2", "AVX512")  # oneDNN's NHWC convolutions, measured (docs/performance.md)


def plan_channels_last(setting: str | bool, device_type: str, conv_layers: int, cpu_isa: str = "DEFAULT") -> bool:
    """channels_last for convolutional nets on CUDA, and on x86 CPUs, where a training step of
    resnet18 ran 1.07-1.13x and test_resnet 1.25-1.43x faster; never on MPS, nor on other CPUs (not
    measured). A ViT has only its patch-embedding conv: it stays as it is."""
    if setting != "auto":
        return bool(setting)
    if conv_layers <= 1:
        return False
    return device_type == "cuda" or (device_type == "cpu" and cpu_isa in CHANNELS_LAST_CPU_ISAS)


def plan_num_workers(setting: str | int, device_type: str, *, cpu_count: int, in_jupyter: bool,
                     platform: str, world_size: int = 1) -> int:
    """DataLoader workers: the configured number, or a default for the machine."""
    if setting != "auto":
        return int(setting)
    if in_jupyter and platform == "darwin":
        return 0  # spawned workers inside Jupyter on macOS are slow and fragile
    per_process = max(1, cpu_count // max(1, world_size))
    return min(8, max(0, per_process - 1))  # leave a core for the training process


@dataclass(frozen=True)
class CpuPlan:
    threads: int  # intra-op threads of the training process
    workers: int  # DataLoader workers (0: the training process loads its own batches)
    batch_seconds: float  # the predicted time per batch
    reason: str

    @property
    def line(self) -> str:
        return f"⚙️  CPU plan: {self.threads} compute thread(s), {self.workers} loader worker(s): {self.reason}"


# The share of a training step that spreads over intra-op threads (Amdahl's law);
# resnet18 and eva02_tiny steps on 1 vs 2 cores of this machine give 0.85-0.95.
PARALLEL_FRACTION = 0.9


def plan_cpu(*, cores: int, step_seconds: float, step_threads: int, load_seconds: float, max_threads: int,
             workers: int | None = None, world_size: int = 1, max_workers: int = 8) -> CpuPlan:
    """Intra-op threads and loader workers from a measured step and a measured batch load.

    `step_seconds` is one training step measured with `step_threads` threads;
    `load_seconds` is loading one batch on one core. Each process of
    `world_size` gets its share of `cores`; workers=0 means the training process
    loads its batches between steps. The step scales by Amdahl's law;
    `max_threads` (the user's torch.set_num_threads or OMP_NUM_THREADS) is never
    exceeded. Planned workers share no core with two or more threads (oversubscribed
    cores make the intra-op threads wait on each other); when loading is the
    bottleneck, every core may load and the one compute thread shares a core with
    a worker, its step paid for by that worker's load (`_seconds`). Workers the user set
    (`workers`) are kept, and are planned by their measured load: a worker idle
    most of the time does not need a core of its own, so the threads may share
    the workers' cores, at the cost of the workers' load landing on the step
    (`_seconds`). The plan line says when the user's setting is slower than the
    planned one. Among the plans with the shortest predicted batch, the one with
    fewer processes wins (less memory, less start-up).
    """
    share = max(1, cores // max(1, world_size))
    # the step on one thread: the measured one, undone by Amdahl's speed-up of `step_threads`
    serial = step_seconds / ((1 - PARALLEL_FRACTION) + PARALLEL_FRACTION / max(1, step_threads))
    # `share` workers leave no core free: `_best_cpu_plan` then gives them one thread beside them
    planned = _best_cpu_plan(serial, load_seconds, share, max_threads, range(0, min(max_workers, share) + 1),
                             oversubscribe=False)
    if workers is None:
        return planned
    kept = _best_cpu_plan(serial, load_seconds, share, max_threads, [workers], oversubscribe=True)
    if kept.batch_seconds > planned.batch_seconds * 1.05:
        kept = dataclasses.replace(kept, reason=kept.reason + (
            f"; data.num_workers: {workers} costs speed: auto would plan {planned.threads} thread(s) and "
            f"{planned.workers} worker(s), {planned.batch_seconds * 1e3:.0f} ms per batch against "
            f"{kept.batch_seconds * 1e3:.0f} ms"))
    return kept


def _step(serial: float, threads: int) -> float:
    return serial * ((1 - PARALLEL_FRACTION) + PARALLEL_FRACTION / threads)


def _seconds(step: float, load: float, threads: int, workers: int, share: int) -> float:
    """The predicted time per batch. Workers beyond the cores the threads leave free take their load
    from the step's cores: that share of the load is added to the step."""
    if workers == 0:
        return load + step
    overflow = max(0, threads + workers - share)
    return max(step + load * min(1.0, overflow / workers), load / workers)


def _best_cpu_plan(serial: float, load: float, share: int, max_threads: int, worker_options: Iterable[int],
                   *, oversubscribe: bool) -> CpuPlan:
    best: tuple[tuple[float, int, int], float, int, int] | None = None
    for w in worker_options:
        top = share if oversubscribe else share - w
        for t in range(1, max(1, min(max_threads, top)) + 1):
            seconds = _seconds(_step(serial, t), load, t, w, share)
            key = (round(seconds, 4), w + t, -t)
            if best is None or key < best[0]:
                best = (key, seconds, w, t)
    assert best is not None
    _, seconds, w, t = best
    step = _step(serial, t)
    bound = "loading" if w and load / w >= step else "compute"
    why = (f"a step takes {step * 1e3:.0f} ms on {t} thread(s), loading a batch {load * 1e3:.0f} ms "
           f"on one core; {share} core(s) per process, {bound}-bound")
    if t + w > share:
        why += f" (the {w} worker(s) are busy {min(1.0, load / w / max(seconds, 1e-9)):.0%} of the time: they share the cores)"
    if t == max_threads and t < share - w:
        why += f" (threads capped at {max_threads} by torch.set_num_threads / OMP_NUM_THREADS)"
    return CpuPlan(threads=t, workers=w, batch_seconds=seconds, reason=why)


# --------------------------------------------------------------------------- edges


def cpu_flags() -> set[str]:
    """The CPU's feature flags: torch's own checks where it has them, and /proc/cpuinfo on Linux."""
    import torch

    flags: set[str] = set()
    for flag, check in (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")):
        probe = getattr(torch.cpu, check, None)
        if probe is not None and probe():
            flags.add(flag)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags.update(line.partition(":")[2].split())
                    break
    except OSError:
        pass  # not Linux: torch's checks above are all there is
    return flags


def cpu_model_name() -> str:
    """The CPU's model name (the probe's cache key, the benchmarks' machine line)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def detect_backends() -> Backends:
    import torch

    cuda = torch.cuda.is_available()
    mps_backend = getattr(torch.backends, "mps", None)
    return Backends(
        cuda=cuda,
        cuda_bf16=bool(cuda and torch.cuda.is_bf16_supported()),
        cuda_name=torch.cuda.get_device_name(0) if cuda else None,
        cuda_count=torch.cuda.device_count() if cuda else 0,
        mps=bool(mps_backend and mps_backend.is_available()),
        mps_built=bool(mps_backend and mps_backend.is_built()),
        cpu_isa=torch.backends.cpu.get_cpu_capability(),
        cpu_bf16=cpu_native_bf16(cpu_flags()),
        cpu_name=cpu_model_name(),
    )


def in_jupyter() -> bool:
    """True inside a Jupyter kernel (where DataLoader workers behave differently on macOS)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython() if hasattr(shell, "get_ipython") else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def apply_backend_flags(plan: DevicePlan) -> None:
    """Process-wide switches that follow from the plan."""
    import torch

    if plan.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = plan.allow_tf32
        torch.backends.cudnn.allow_tf32 = plan.allow_tf32
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' → CUDA, then MPS, then CPU (`plan_device`); 'cuda:1' etc. as given (evaluate, predict)."""
    import torch  # as in detect_backends: the plans above stay importable without torch

    if isinstance(device, torch.device) or ":" in str(device):
        return torch.device(device)
    return torch.device(plan_device(str(device), detect_backends()).type)

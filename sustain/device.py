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
- CPU: fp32 unless AMP is asked for (then bf16 autocast, no scaler); channels_last for
  convolutional models on x86 (AVX2/AVX512).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

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

    @property
    def label(self) -> str:
        if not self.autocast:
            return "fp32"
        return f"{'bf16' if self.dtype == 'bfloat16' else 'fp16'} autocast" + (" + GradScaler" if self.grad_scaler else "")


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


def plan_precision(device_type: str, amp: str, bf16_supported: bool) -> PrecisionPlan:
    """Autocast dtype and GradScaler use for a device and the `train.amp` setting (auto | on | off)."""
    if amp not in ("auto", "on", "off"):
        raise ConfigError("train.amp", f"unknown value {amp!r}", "use auto, on or off")
    use_amp = amp == "on" or (amp == "auto" and device_type == "cuda")
    if not use_amp:
        return PrecisionPlan(autocast=False, dtype="float32", grad_scaler=False)
    if device_type == "cpu":
        return PrecisionPlan(autocast=True, dtype="bfloat16", grad_scaler=False)
    if bf16_supported:  # bf16 has fp32's range: no loss scaling needed
        return PrecisionPlan(autocast=True, dtype="bfloat16", grad_scaler=False)
    return PrecisionPlan(autocast=True, dtype="float16", grad_scaler=True)


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
    `world_size` gets its share of `cores`; threads + workers never exceed it
    (oversubscribed cores make the intra-op threads wait on each other), and
    workers=0 means the training process loads its batches between steps. The
    step scales by Amdahl's law; `max_threads` (the user's torch.set_num_threads
    or OMP_NUM_THREADS) is never exceeded; `workers`, when the user set it, is
    kept. Among the plans with the shortest predicted batch, the one with fewer
    processes wins (less memory, less start-up).
    """
    share = max(1, cores // max(1, world_size))
    # the step on one thread: the measured one, undone by Amdahl's speed-up of `step_threads`
    serial = step_seconds / ((1 - PARALLEL_FRACTION) + PARALLEL_FRACTION / max(1, step_threads))

    def step(t: int) -> float:
        return serial * ((1 - PARALLEL_FRACTION) + PARALLEL_FRACTION / t)

    worker_options = [workers] if workers is not None else range(0, min(max_workers, share - 1) + 1)
    best: tuple[float, int, int] | None = None
    for w in worker_options:
        for t in range(1, max(1, min(max_threads, share - w)) + 1):
            seconds = load_seconds + step(t) if w == 0 else max(step(t), load_seconds / w)
            key = (round(seconds, 4), w + t, -t)
            if best is None or key < (round(best[0], 4), best[1] + best[2], -best[2]):
                best = (seconds, w, t)
    assert best is not None
    seconds, w, t = best
    bound = "loading" if w and load_seconds / w >= step(t) else "compute"
    why = (f"a step takes {step(t) * 1e3:.0f} ms on {t} thread(s), loading a batch {load_seconds * 1e3:.0f} ms "
           f"on one core; {share} core(s) per process, {bound}-bound")
    if t == max_threads and t < share - w:
        why += f" (threads capped at {max_threads} by torch.set_num_threads / OMP_NUM_THREADS)"
    return CpuPlan(threads=t, workers=w, batch_seconds=seconds, reason=why)


# --------------------------------------------------------------------------- edges


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

"""The accelerator check: CUDA's properties, MPS's small op and CPU parity, the CPU fallback.

Accelerator decisions go through the pure `device.plan_device`, so the MPS
branch can be exercised with simulated `Backends` on any machine.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass

from ..device import Backends, plan_device, plan_precision
from ..utils import cpu_count, finite_or_none
from .core import CheckResult, DoctorContext, check, failed, passed, warned

# The devices the CUDA and MPS checks run on; tests without that hardware point them at the CPU.
CUDA_DEVICE = "cuda"
MPS_DEVICE = "mps"
PARITY_LOGIT_TOL = 1e-3  # max |logit difference|, relative to the largest logit (at least 1)
PARITY_GRAD_TOL = 1e-2  # ‖g_device − g_cpu‖ / ‖g_cpu‖
FORWARD_BATCH = 2


def check_device(plan_type: str) -> str:
    """The torch device the checks use for a planned device type (read at call time: tests repoint it)."""
    return {"cuda": CUDA_DEVICE, "mps": MPS_DEVICE}.get(plan_type, "cpu")


@dataclass(frozen=True)
class Parity:
    """How far an accelerator's forward and backward pass is from the CPU's."""

    logit_diff: float  # max |logit_device − logit_cpu|
    logit_scale: float  # max |logit_cpu|
    grad_rel_diff: float  # ‖g_device − g_cpu‖ / ‖g_cpu‖

    @property
    def logit_rel_diff(self) -> float:
        return self.logit_diff / max(1.0, self.logit_scale)

    def agrees(self) -> bool:
        return (math.isfinite(self.logit_rel_diff) and math.isfinite(self.grad_rel_diff)
                and self.logit_rel_diff <= PARITY_LOGIT_TOL and self.grad_rel_diff <= PARITY_GRAD_TOL)


def forward_backward_parity(model, inputs, device: str) -> Parity:
    """One forward and backward of `model` on the CPU and on `device` (a copy), compared.

    Eval mode, so dropout and drop-path do not make the two runs differ by design.
    """
    import torch

    def run(net, x):
        net.zero_grad(set_to_none=True)
        logits = net(x)
        logits.float().logsumexp(dim=1).mean().backward()
        grads = torch.cat([p.grad.detach().float().flatten().cpu() for p in net.parameters() if p.grad is not None])
        return logits.detach().float().cpu(), grads

    cpu_model = copy.deepcopy(model).eval()
    dev_model = copy.deepcopy(model).to(device).eval()
    cpu_logits, cpu_grads = run(cpu_model, inputs)
    dev_logits, dev_grads = run(dev_model, inputs.to(device))
    return Parity(
        logit_diff=float((dev_logits - cpu_logits).abs().max()),
        logit_scale=float(cpu_logits.abs().max()),
        grad_rel_diff=float((dev_grads - cpu_grads).norm() / cpu_grads.norm().clamp_min(1e-12)),
    )


def small_op(device: str) -> None:
    """A matmul and a reduction on `device`, checked against the CPU."""
    import torch

    a = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    want = (a @ a.T).softmax(dim=1).sum(dim=0)
    got = (a.to(device) @ a.to(device).T).softmax(dim=1).sum(dim=0).cpu()
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"a small matmul/softmax on {device} gave {got.tolist()}, the CPU {want.tolist()}")


@check("Accelerator")
def check_accelerator(ctx: DoctorContext) -> CheckResult:
    backends = ctx.backends
    plan = plan_device(ctx.cfg.device, backends)  # a ConfigError names `device` and the fix
    if plan.type == "cuda":
        return _cuda_result(ctx, backends)
    if plan.type == "mps":
        return _mps_result(ctx)
    threads = cpu_count()
    if ctx.cfg.device == "cpu":
        return passed(f"CPU ({threads} cores), as the config asks (device: cpu)", device="cpu")
    if backends.mps_built and sys.platform == "darwin":
        return warned(f"CPU ({threads} cores): this torch has MPS support but the Apple GPU is not available",
                      "MPS needs macOS 12.3+ on Apple Silicon and an arm64 (not Rosetta) Python", device="cpu")
    return warned(f"CPU ({threads} cores): no CUDA GPU or Apple MPS found",
                  "fine for the demo; for EVA02-Base use a CUDA GPU or an Apple Silicon Mac", device="cpu")


def _cuda_result(ctx: DoctorContext, backends: Backends) -> CheckResult:
    import torch

    props = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info(0)
    small_op(CUDA_DEVICE)
    precision = plan_precision("cuda", ctx.cfg.train.amp, backends.cuda_bf16)
    return passed(f"CUDA: {props.name}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free), "
                  f"{backends.cuda_count} GPU(s), precision {precision.label}",
                  device="cuda", name=props.name, memory_gib=round(total / 2**30, 2),
                  free_gib=round(free / 2**30, 2), gpus=backends.cuda_count, precision=precision.label)


def _mps_result(ctx: DoctorContext) -> CheckResult:
    import torch

    backends = ctx.backends
    fix = ("set device: cpu (or --set device=cpu), and keep PYTORCH_ENABLE_MPS_FALLBACK=1; "
           "updating macOS and torch usually fixes MPS errors")
    if not backends.mps_built:
        return failed("this torch build has no MPS support", "install the macOS arm64 build of torch", device="mps")
    try:
        small_op(MPS_DEVICE)
    except Exception as exc:
        return failed(f"MPS is available but a small op failed: {type(exc).__name__}: {exc}", fix, device="mps")
    model = ctx.model()
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(FORWARD_BATCH, 3, ctx.input_size, ctx.input_size, generator=gen)
    try:
        parity = forward_backward_parity(model, inputs, MPS_DEVICE)
    except Exception as exc:
        return failed(f"MPS forward+backward of {ctx.cfg.model.name} failed: {type(exc).__name__}: {exc}", fix,
                      device="mps")
    return parity_verdict(parity, ctx.cfg.model.name, fix)


def parity_verdict(parity: Parity, model_name: str, fix: str) -> CheckResult:
    numbers = (f"max logit diff {parity.logit_diff:.2e} (relative {parity.logit_rel_diff:.2e}), "
               f"gradient diff {parity.grad_rel_diff:.2e}")
    data = {"device": "mps", "logit_rel_diff": finite_or_none(parity.logit_rel_diff),
            "grad_rel_diff": finite_or_none(parity.grad_rel_diff)}  # NaN is not JSON
    if parity.agrees():
        return passed(f"MPS (Apple Silicon GPU) built and available; small op OK; one forward+backward of "
                      f"{model_name} matches the CPU ({numbers})", **data)
    return failed(f"MPS forward+backward of {model_name} disagrees with the CPU ({numbers}; tolerance "
                  f"{PARITY_LOGIT_TOL:g} logits, {PARITY_GRAD_TOL:g} gradients)", fix, **data)

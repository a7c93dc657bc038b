"""Device and precision plans under simulated hardware (SPEC §6): the CUDA and MPS branches run anywhere."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from sustain.device import (
    Backends,
    Bf16Probe,
    cpu_native_bf16,
    detect_backends,
    plan_channels_last,
    plan_device,
    plan_num_workers,
    plan_precision,
    probed_step_seconds,
    resumed_precision,
    wants_bf16_probe,
)
from sustain.errors import ConfigError

CPU_ONLY = Backends()
MAC = Backends(mps=True, mps_built=True)
A100 = Backends(cuda=True, cuda_bf16=True, cuda_name="NVIDIA A100", cuda_count=1)
T4 = Backends(cuda=True, cuda_bf16=False, cuda_name="Tesla T4", cuda_count=1)


@pytest.mark.parametrize(("available", "expected"), [
    (CPU_ONLY, "cpu"),
    (MAC, "mps"),
    (A100, "cuda"),
    (Backends(cuda=True, mps=True, mps_built=True, cuda_name="x"), "cuda"),  # CUDA before MPS
])
def test_auto_picks_cuda_then_mps_then_cpu(available: Backends, expected: str) -> None:
    assert plan_device("auto", available).type == expected


def test_explicit_cpu_wins_over_an_accelerator() -> None:
    assert plan_device("cpu", A100).type == "cpu"
    assert plan_device("cpu", MAC).type == "cpu"


def test_cuda_plan_pins_memory_and_enables_tf32() -> None:
    plan = plan_device("auto", A100)
    assert plan.pin_memory and plan.allow_tf32 and plan.grad_checkpointing_ok
    assert "NVIDIA A100" in plan.line


def test_mps_plan_never_pins_memory_nor_checkpoints_gradients() -> None:
    plan = plan_device("auto", MAC)
    assert plan.type == "mps"
    assert not plan.pin_memory
    assert not plan.grad_checkpointing_ok
    assert not plan.allow_tf32


@pytest.mark.parametrize(("requested", "available", "needle"), [
    ("cuda", CPU_ONLY, "no CUDA GPU"),
    ("mps", CPU_ONLY, "no MPS support"),
    ("mps", Backends(mps_built=True), "not available"),
])
def test_asking_for_a_missing_device_names_the_key_and_the_fix(requested, available, needle) -> None:
    with pytest.raises(ConfigError) as err:
        plan_device(requested, available)
    assert err.value.key == "device"
    assert needle in str(err.value)
    assert "auto" in str(err.value)


def test_each_device_plan_in_full_and_an_explicit_request_wins_over_auto() -> None:
    from sustain.device import DevicePlan

    assert plan_device("cpu", A100) == DevicePlan("cpu", "CPU", pin_memory=False, allow_tf32=False,
                                                  grad_checkpointing_ok=True)
    assert plan_device("mps", Backends(cuda=True, mps=True)) == DevicePlan(
        "mps", "Apple Silicon GPU", pin_memory=False, allow_tf32=False, grad_checkpointing_ok=False)
    assert plan_device("cuda", A100).name == "NVIDIA A100"
    assert plan_device("auto", Backends(cuda=True)).name == "CUDA GPU"  # a GPU without a name
    assert plan_device("cpu", CPU_ONLY).line == "🖥️  Using device: cpu (CPU)"


@pytest.mark.parametrize(("requested", "available", "message"), [
    ("tpu", A100, "Config error at 'device': unknown device 'tpu'\n  → use auto, cuda, mps or cpu"),
    ("cuda", MAC, "Config error at 'device': CUDA was asked for but no CUDA GPU is available\n"
                  "  → use device: auto (or --set device=cpu), or install a CUDA build of torch"),
    ("mps", CPU_ONLY, "Config error at 'device': MPS was asked for but this torch build has no MPS support\n"
                      "  → use device: auto or cpu; MPS needs macOS 12.3+ on Apple Silicon"),
    ("mps", Backends(mps_built=True), "Config error at 'device': MPS was asked for but this torch build has MPS "
                                      "but the GPU is not available\n  → use device: auto or cpu; MPS needs "
                                      "macOS 12.3+ on Apple Silicon"),
])
def test_the_device_errors_word_for_word(requested: str, available: Backends, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        plan_device(requested, available)
    assert err.value.key == "device" and str(err.value) == message


def test_cuda_precision_bf16_where_supported_else_fp16_with_scaler() -> None:
    bf16 = plan_precision("cuda", "auto", bf16_supported=True)
    assert (bf16.autocast, bf16.dtype, bf16.grad_scaler) == (True, "bfloat16", False)
    fp16 = plan_precision("cuda", "auto", bf16_supported=False)
    assert (fp16.autocast, fp16.dtype, fp16.grad_scaler) == (True, "float16", True)
    assert "GradScaler" in fp16.label


@pytest.mark.parametrize("device_type", ["mps", "cpu"])
def test_mps_and_cpu_default_to_fp32(device_type: str) -> None:
    plan = plan_precision(device_type, "auto", bf16_supported=False)
    assert (plan.autocast, plan.dtype, plan.grad_scaler) == (False, "float32", False)
    assert plan.label == "fp32"


PASSING = Bf16Probe(loss_fp32=2.30, loss_bf16=2.301, grad_cosine=0.999, fp32_seconds=0.713, bf16_seconds=0.394)


@pytest.mark.parametrize(("flags", "expected"), [
    ("fpu sse avx2 avx512f avx512_bf16 avx512_vnni", "AVX512-BF16"),
    ("avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", "AMX"),
    ("fpu sse sse2 avx avx2 fma", None),
    ("avx512f avx512bw avx512_vnni", None),  # AVX512 without its bf16 extension
    ("", None),
])
def test_cpu_native_bf16_from_cpuinfo_flags(flags: str, expected: str | None) -> None:
    assert cpu_native_bf16(flags.split()) == expected


def test_this_machines_flags_match_proc_cpuinfo() -> None:
    # The detected flags include /proc/cpuinfo's: the plan sees what the kernel reports.
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo")
    reported = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split(":")[1].split()
    assert detect_backends().cpu_bf16 == cpu_native_bf16(reported)


@pytest.mark.parametrize("cpu_bf16", ["AMX", "AVX512-BF16"])
def test_cpu_auto_is_bf16_only_with_native_bf16_and_a_passing_probe(cpu_bf16: str) -> None:
    assert wants_bf16_probe("cpu", "auto", cpu_bf16)
    plan = plan_precision("cpu", "auto", False, cpu_bf16=cpu_bf16, probe=PASSING)
    assert (plan.autocast, plan.dtype, plan.grad_scaler) == (True, "bfloat16", False)
    assert cpu_bf16 in plan.line and "1.81×" in plan.line and "cosine 0.9990" in plan.line
    assert plan.probe["grad_cosine"] == 0.999 and plan.probe["cpu_bf16"] == cpu_bf16
    assert plan.record() == {"label": "bf16 autocast", "reason": plan.reason, "probe": plan.probe}
    unprobed = plan_precision("cpu", "auto", False, cpu_bf16=cpu_bf16)
    assert not unprobed.autocast


def test_cpu_auto_without_native_bf16_stays_fp32_and_does_not_probe() -> None:
    assert not wants_bf16_probe("cpu", "auto", None)
    plan = plan_precision("cpu", "auto", False, cpu_bf16=None, probe=PASSING)
    assert not plan.autocast and "no native bf16" in plan.reason


@pytest.mark.parametrize(("probe", "needle"), [
    (dataclasses.replace(PASSING, loss_bf16=2.50), "changed the loss by 8.7%"),
    (dataclasses.replace(PASSING, grad_cosine=0.95), "cosine 0.950"),
    (dataclasses.replace(PASSING, loss_bf16=float("nan")), "non-finite"),
    (dataclasses.replace(PASSING, bf16_seconds=0.70), "not faster"),
    (dataclasses.replace(PASSING, bf16_seconds=0.90), "not faster"),
])
def test_a_failed_probe_keeps_fp32_and_says_why_in_one_line(probe: Bf16Probe, needle: str) -> None:
    plan = plan_precision("cpu", "auto", False, cpu_bf16="AVX512-BF16", probe=probe)
    assert not plan.autocast and plan.label == "fp32"
    assert needle in plan.line and "\n" not in plan.line
    assert plan.probe["loss_bf16"] == probe.loss_bf16 or math.isnan(plan.probe["loss_bf16"])


def test_the_cpu_plan_reuses_the_probes_timing_of_the_chosen_precision_only_when_measured_now() -> None:
    bf16 = plan_precision("cpu", "auto", False, cpu_bf16="AMX", probe=PASSING)
    assert probed_step_seconds(bf16) == PASSING.bf16_seconds
    slow = dataclasses.replace(PASSING, bf16_seconds=PASSING.fp32_seconds)
    assert probed_step_seconds(plan_precision("cpu", "auto", False, cpu_bf16="AMX", probe=slow)) == slow.fp32_seconds
    cached = plan_precision("cpu", "auto", False, cpu_bf16="AMX", probe=PASSING, probe_cached=True)
    assert probed_step_seconds(cached) is None  # timed on another day's load: the plan times a step itself
    assert probed_step_seconds(plan_precision("cpu", "off", False, cpu_bf16="AMX")) is None


def test_a_resume_keeps_the_precision_the_run_trained_in_where_the_probe_chose() -> None:
    bf16 = plan_precision("cpu", "auto", False, cpu_bf16="AMX", probe=PASSING)
    slow = dataclasses.replace(PASSING, bf16_seconds=PASSING.fp32_seconds)  # a noisier timing: the gate fails
    fp32_now = plan_precision("cpu", "auto", False, cpu_bf16="AMX", probe=slow)
    saved = {"device": "cpu", "plan": dataclasses.asdict(bf16)}
    kept = resumed_precision(fp32_now, saved)
    assert (kept.autocast, kept.dtype) == (True, "bfloat16")
    assert kept.reason.startswith("as the run being resumed") and kept.probe == bf16.probe
    assert resumed_precision(bf16, saved) is bf16  # the same plan: nothing to say
    # This start's own plan stands: no probe (amp on/off, no native bf16), a run trained elsewhere, an old file.
    off = plan_precision("cpu", "off", False, cpu_bf16="AMX")
    assert resumed_precision(off, saved) is off
    assert resumed_precision(fp32_now, {"device": "cuda", "plan": dataclasses.asdict(bf16)}) is fp32_now
    assert resumed_precision(fp32_now, None) is fp32_now


@pytest.mark.parametrize("cpu_bf16", [None, "AMX"])
def test_mps_auto_stays_fp32_and_on_off_keep_their_meaning(cpu_bf16: str | None) -> None:
    assert not wants_bf16_probe("mps", "auto", cpu_bf16)
    assert not plan_precision("mps", "auto", True, cpu_bf16=cpu_bf16, probe=PASSING).autocast
    # on: bf16 on any CPU, probe or not; off: fp32 even where the probe passed
    assert plan_precision("cpu", "on", False, cpu_bf16=cpu_bf16).dtype == "bfloat16"
    assert not wants_bf16_probe("cpu", "on", cpu_bf16) and not wants_bf16_probe("cpu", "off", cpu_bf16)
    off = plan_precision("cpu", "off", False, cpu_bf16=cpu_bf16, probe=PASSING)
    assert not off.autocast and off.reason == "train.amp: off"


def test_amp_only_when_asked_for_on_mps_and_cpu() -> None:
    mps = plan_precision("mps", "on", bf16_supported=False)
    assert (mps.autocast, mps.dtype, mps.grad_scaler) == (True, "float16", True)
    cpu = plan_precision("cpu", "on", bf16_supported=False)
    assert (cpu.autocast, cpu.dtype, cpu.grad_scaler) == (True, "bfloat16", False)
    assert not plan_precision("cuda", "off", bf16_supported=True).autocast


def test_num_workers_zero_in_jupyter_on_macos_only() -> None:
    kw = {"cpu_count": 8}
    assert plan_num_workers("auto", "mps", in_jupyter=True, platform="darwin", **kw) == 0
    assert plan_num_workers("auto", "mps", in_jupyter=False, platform="darwin", **kw) > 0
    assert plan_num_workers("auto", "cuda", in_jupyter=True, platform="linux", **kw) > 0
    assert plan_num_workers(3, "mps", in_jupyter=True, platform="darwin", **kw) == 3  # explicit wins


def test_num_workers_leave_a_core_and_share_among_ranks() -> None:
    assert plan_num_workers("auto", "cpu", cpu_count=2, in_jupyter=False, platform="linux") == 1
    assert plan_num_workers("auto", "cpu", cpu_count=64, in_jupyter=False, platform="linux") == 8
    assert plan_num_workers("auto", "cuda", cpu_count=16, in_jupyter=False, platform="linux", world_size=4) == 3
    assert plan_num_workers("auto", "cpu", cpu_count=1, in_jupyter=False, platform="linux") == 0  # no core to spare
    assert plan_num_workers("auto", "cuda", cpu_count=5, in_jupyter=False, platform="linux", world_size=2) == 1


def test_channels_last_for_conv_nets_on_cuda_and_x86_cpus() -> None:
    assert plan_channels_last("auto", "cuda", conv_layers=50)
    assert not plan_channels_last("auto", "cuda", conv_layers=1)  # a ViT: just the patch embedding
    assert plan_channels_last("auto", "cuda", conv_layers=2)
    assert not plan_channels_last("auto", "mps", conv_layers=50)
    assert plan_channels_last("auto", "cpu", conv_layers=50, cpu_isa="AVX512")
    assert plan_channels_last("auto", "cpu", conv_layers=50, cpu_isa="AVX2")
    assert not plan_channels_last("auto", "cpu", conv_layers=1, cpu_isa="AVX512")
    assert not plan_channels_last("auto", "cpu", conv_layers=50, cpu_isa="DEFAULT")  # e.g. an ARM CPU: not measured
    assert plan_channels_last(True, "cpu", conv_layers=0)
    assert not plan_channels_last(False, "cuda", conv_layers=50)


def test_detect_backends_reports_this_machine() -> None:
    import torch

    found = detect_backends()
    assert found.cuda == torch.cuda.is_available()
    assert plan_device("auto", found).type in ("cuda", "mps", "cpu")


def test_timing_the_step_for_the_cpu_plan_leaves_the_model_and_the_rng_as_they_were() -> None:
    """The plan times real training-mode steps; BatchNorm statistics, weights, gradients and the
    torch RNG (drop path) must be as before, or a timed run would differ from an untimed one."""
    from types import SimpleNamespace

    import timm
    import torch

    from sustain.config import config_from_dict
    from sustain.device import plan_precision
    from sustain.training.cpu_plan import plan_cpu_measured
    from sustain.training.losses import PartialLabelLoss

    cfg = config_from_dict({"data": {"sources": [{"name": "s", "root": "r", "label_map": "identity"}]}})
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3, drop_path_rate=0.1).train()
    batch = SimpleNamespace(images=torch.randn(4, 3, 32, 32), targets=torch.eye(3)[[0, 1, 2, 0]])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    threads = torch.get_num_threads()
    try:
        plan = plan_cpu_measured(cfg.data.num_workers, model, batch, PartialLabelLoss(), torch.device("cpu"),
                                 plan_precision("cpu", "off", False), 0.01, False, 1)
    finally:
        torch.set_num_threads(threads)
    assert plan.threads >= 1 and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_cpu_auto_plans_in_full_and_the_probe_summary_word_for_word() -> None:
    from sustain.device import PrecisionPlan

    assert plan_precision("cpu", "auto", False, cpu_bf16=None) == PrecisionPlan(
        False, "float32", False, "this CPU has no native bf16 (AMX or AVX512-BF16)")
    assert plan_precision("cpu", "auto", False, cpu_bf16="AMX") == PrecisionPlan(
        False, "float32", False, "AMX CPU, bf16 not probed")
    failed = plan_precision("cpu", "auto", False, cpu_bf16="AMX", probe=dataclasses.replace(PASSING, bf16_seconds=0.70))
    assert (failed.autocast, failed.dtype, failed.grad_scaler) == (False, "float32", False)
    assert failed.reason == ("bf16 is not faster enough here (1.02×, under 1.05×): a step took 700 ms against "
                             "fp32's 713 ms; probe: loss Δ 0.04%, gradient cosine 0.9990, step 713 → 700 ms (1.02×)")
    assert PASSING.summary() == "loss Δ 0.04%, gradient cosine 0.9990, step 713 → 394 ms (1.81×)"


def test_a_probe_exactly_at_every_gate_passes() -> None:
    at_gates = Bf16Probe(loss_fp32=100.0, loss_bf16=102.0, grad_cosine=0.98, fp32_seconds=1.05, bf16_seconds=1.0)
    assert (at_gates.loss_rel_diff, at_gates.speedup) == (0.02, 1.05)
    assert at_gates.failure() is None


def test_each_precision_plan_in_full_word_for_word() -> None:
    from sustain.device import PrecisionPlan as Plan

    off = plan_precision("cuda", "off", True)
    assert off == Plan(False, "float32", False, "train.amp: off") and off.line == "🧮 Precision: fp32 (train.amp: off)"
    assert plan_precision("mps", "auto", True) == Plan(False, "float32", False, "train.amp: auto keeps fp32 on MPS")
    assert plan_precision("cuda", "auto", True) == Plan(True, "bfloat16", False, "train.amp: auto on CUDA")
    fp16 = plan_precision("cuda", "auto", False)
    assert fp16 == Plan(True, "float16", True, "train.amp: auto on CUDA, no bf16 on this device")
    assert fp16.label == "fp16 autocast + GradScaler"
    assert plan_precision("cuda", "on", False) == Plan(True, "float16", True, "train.amp: on, no bf16 on this device")
    assert plan_precision("mps", "on", True) == Plan(True, "bfloat16", False, "train.amp: on")
    assert plan_precision("cpu", "on", False).line == "🧮 Precision: bf16 autocast (train.amp: on)"


def test_an_unknown_amp_value_names_the_key_and_the_choices() -> None:
    with pytest.raises(ConfigError) as err:
        plan_precision("cuda", "fast", True)
    assert err.value.key == "train.amp"
    assert str(err.value) == "Config error at 'train.amp': unknown value 'fast'\n  → use auto, on or off"

"""The environment doctor: `sustain doctor` / training_diagnostics.py (SPEC §9).

Every check must come back as PASS, WARN or FAIL with a hint, never as None
(the seed's script always exited 1 because one check returned None). Each
precondition is broken for real where that is possible here: a missing data
root, an output folder under a file, a model name timm does not know, a NumPy
that cannot be imported. Only the Apple GPU is simulated: its checks run on
another device through `MPS_DEVICE`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sustain.cli import main as cli_main
from sustain.config import load_config
from sustain.data.demo import make_demo_lake
from sustain.device import Backends
from sustain.diagnostics import (
    CheckResult,
    DoctorContext,
    Parity,
    Status,
    accelerator,
    check,
    doctor,
    numpy_repair_reason,
    parity_verdict,
    run_diagnostics,
)
from sustain.diagnostics.accelerator import check_accelerator
from sustain.diagnostics.data_checks import (
    check_data,
    check_output_folder,
    check_workers,
    disk_verdict,
)
from sustain.diagnostics.environment import check_pytorch
from sustain.diagnostics.model_checks import check_forward, check_model

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
ENV_CHECKS = ["PyTorch installation", "Accelerator", "Model availability", "Transform pipeline", "Forward pass",
              "Output folder", "DataLoader workers"]
CPU_ONLY = Backends()


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lake") / "demo"
    make_demo_lake(root, seed=0, per_class=2)
    return root


@pytest.fixture
def overrides(lake: Path, tmp_path: Path) -> list[str]:
    """configs/demo.yaml on the small lake, a 32 px model and a fresh output folder."""
    return [f"data.root={lake}", f"output_dir={tmp_path / 'out'}", "model.input_size=32", "device=cpu"]


def ctx_for(overrides: list[str], *extra: str, backends: Backends = CPU_ONLY) -> DoctorContext:
    return DoctorContext(load_config(DEMO_CONFIG, [*overrides, *extra]), backends=backends)


def write_fake_numpy(folder: Path) -> Path:
    """A `numpy` that fails to import the way a NumPy/torch ABI mismatch does."""
    (folder / "numpy").mkdir(parents=True)
    (folder / "numpy" / "__init__.py").write_text(
        'raise ImportError("numpy.core.multiarray failed to import (NumPy 2 ABI break)")\n')
    return folder


# --------------------------------------------------------------------------- healthy environment


@pytest.mark.slow
def test_script_passes_on_this_environment_and_its_json_parses() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "training_diagnostics.py"), "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # stdout holds the JSON and nothing else
    assert report["ok"] is True and report["exit_code"] == 0
    assert [c["name"] for c in report["checks"]] == ENV_CHECKS  # no data check without --config
    assert all(c["status"] in ("PASS", "WARN") for c in report["checks"])
    assert report["versions"]["torch"] == torch.__version__.split("+")[0]
    assert "DIAGNOSTIC SUMMARY" in proc.stderr and "PyTorch installation" in proc.stderr


def test_every_check_returns_a_result_and_the_data_is_counted(overrides: list[str]) -> None:
    report = run_diagnostics(load_config(DEMO_CONFIG, overrides), backends=CPU_ONLY)
    assert [r.name for r in report.results] == [*ENV_CHECKS[:5], "Data", *ENV_CHECKS[5:]]
    assert all(isinstance(r, CheckResult) and r.status in Status for r in report.results)
    assert report.exit_code == 0, [r.to_dict() for r in report.failures]
    assert report.result("Accelerator").status is Status.PASS  # device: cpu was asked for
    forward = report.result("Forward pass")
    assert forward.status is Status.PASS and "output [2, 30]" in forward.detail
    data = report.result("Data")
    # The demo lake has a folder no label_map names; it is reported, by source and folder.
    assert data.status is Status.WARN and "demo_coarse:misc_unsorted" in data.detail
    sources = data.data["sources"]
    assert sources["demo_master"]["labelled"] > 0 and sources["demo_master"]["unmapped"] == 0
    assert sources["demo_coarse"]["dropped"] > 0  # trash: null
    assert "add these folders to the source's label_map" in data.hint


# --------------------------------------------------------------------------- broken preconditions


def test_missing_data_root_fails_and_names_it(overrides: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "no_such_lake"
    report = run_diagnostics(load_config(DEMO_CONFIG, [*overrides, f"data.root={missing}"]), backends=CPU_ONLY)
    data = report.result("Data")
    assert data.status is Status.FAIL
    assert str(missing / "master" / "images" / "images") in data.detail and "demo_master" in data.detail
    assert "sustain data download" in data.hint
    assert report.exit_code == 1
    assert [r.name for r in report.failures] == ["Data"]


def test_strict_data_with_unmapped_folders_fails(overrides: list[str]) -> None:
    result = check_data(ctx_for(overrides, "data.strict=true"))
    assert result.status is Status.FAIL and "misc_unsorted" in result.detail and "strict" in result.hint


def test_output_folder_under_a_file_fails(overrides: list[str], tmp_path: Path) -> None:
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    result = check_output_folder(ctx_for(overrides, f"output_dir={blocker / 'run'}"))
    assert result.status is Status.FAIL
    assert str(blocker) in result.detail and "is a file" in result.detail
    assert "output_dir" in result.hint


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write into a read-only folder")
def test_read_only_output_folder_fails(overrides: list[str], tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = check_output_folder(ctx_for(overrides, f"output_dir={locked / 'run'}"))
    assert result.status is Status.FAIL and "not writable" in result.detail


def test_output_folder_reports_free_disk(overrides: list[str]) -> None:
    result = check_output_folder(ctx_for(overrides))
    assert result.status in (Status.PASS, Status.WARN)
    assert "writable" in result.detail and result.data["free_bytes"] > 0
    assert not Path(result.data["path"]).exists()  # checking never creates the folder


def test_disk_verdict_thresholds() -> None:
    gib = 1 << 30
    assert disk_verdict(free=gib // 2, needed=gib) is Status.FAIL
    assert disk_verdict(free=int(1.5 * gib), needed=gib) is Status.WARN
    assert disk_verdict(free=10 * gib, needed=gib) is Status.PASS


def test_unknown_model_fails_with_a_hint_and_dependent_checks_say_why(overrides: list[str]) -> None:
    report = run_diagnostics(load_config(DEMO_CONFIG, [*overrides, "model.name=eva02_basee_patch14_224"]),
                             include_data=False, backends=CPU_ONLY)
    model = report.result("Model availability")
    assert model.status is Status.FAIL and "eva02_basee_patch14_224" in model.detail
    assert "eva02_base_patch14_224" in model.hint  # a similar real name is suggested
    forward = report.result("Forward pass")
    assert forward.status is Status.FAIL and "model could not be created" in forward.detail
    assert report.exit_code == 1


def test_missing_weights_file_fails(overrides: list[str], tmp_path: Path) -> None:
    result = check_model(ctx_for(overrides, f"model.pretrained={tmp_path / 'weights.safetensors'}"))
    assert result.status is Status.FAIL and "weights.safetensors" in result.detail


def test_model_check_reports_parameters_and_weights_source(overrides: list[str]) -> None:
    result = check_model(ctx_for(overrides))
    assert result.status is Status.PASS
    assert result.data["parameters"] > 0 and "random initialisation" in result.data["weights"]


def test_failing_torch_numpy_round_trip_fails_with_the_numpy_fix(monkeypatch: pytest.MonkeyPatch,
                                                                 overrides: list[str]) -> None:
    def numpy_unavailable(self):
        raise RuntimeError("Numpy is not available")  # torch's message when its NumPy bridge is broken

    monkeypatch.setattr(torch.Tensor, "numpy", numpy_unavailable)
    result = check_pytorch(ctx_for(overrides))
    assert result.status is Status.FAIL and "Numpy is not available" in result.detail
    assert "numpy<2.0" in result.hint and "fix_environment.sh" in result.hint
    assert "round trip failed" in numpy_repair_reason()


def test_numpy_2_needs_repair_even_when_the_round_trip_works() -> None:
    vers = {"python": "3.11", "torch": "2.3.0", "numpy": "2.1.0"}
    assert "2.1.0" in numpy_repair_reason(vers, roundtrip=lambda: None)
    assert numpy_repair_reason({**vers, "numpy": "1.26.4"}, roundtrip=lambda: None) is None
    assert numpy_repair_reason({**vers, "torch": None}) is None  # no torch: nothing NumPy can fix


@pytest.mark.slow
def test_broken_numpy_fails_the_script_with_its_hint(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(write_fake_numpy(tmp_path / "site"))}
    proc = subprocess.run([sys.executable, str(REPO / "training_diagnostics.py"), "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["PyTorch installation"]["status"] == "FAIL"
    assert "ABI break" in checks["PyTorch installation"]["detail"]
    assert "numpy<2.0" in checks["PyTorch installation"]["hint"]
    # The checks that need torch fail too, and point at the real cause rather than at themselves.
    assert "fix the 'PyTorch installation' check first" in checks["Forward pass"]["hint"]


def test_a_check_that_returns_nothing_or_raises_becomes_a_named_fail(overrides: list[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    @check("Returns None")
    def returns_none(ctx):
        return None

    @check("Raises")
    def raises(ctx):
        raise ValueError("boom")

    ctx = ctx_for(overrides)
    none_result, raised = returns_none(ctx), raises(ctx)
    assert none_result.name == "Returns None" and none_result.status is Status.FAIL
    assert "returned None" in none_result.detail
    assert raised.status is Status.FAIL and "ValueError: boom" in raised.detail and raised.hint

    monkeypatch.setattr(doctor, "CHECKS", (check_pytorch, returns_none))
    report = run_diagnostics(ctx.cfg, include_data=False)
    assert report.exit_code == 1 and [r.name for r in report.failures] == ["Returns None"]


def test_bad_config_path_is_a_usage_error(tmp_path: Path) -> None:
    assert cli_main(["doctor", "--config", str(tmp_path / "missing.yaml")]) == 2


# --------------------------------------------------------------------------- accelerator (MPS simulated)


def test_cpu_only_machine_warns_under_auto(overrides: list[str]) -> None:
    result = check_accelerator(ctx_for(overrides, "device=auto"))
    assert result.status is Status.WARN and "no CUDA GPU or Apple MPS" in result.detail


def test_simulated_mps_runs_the_op_and_the_cpu_parity(overrides: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accelerator, "MPS_DEVICE", "cpu")  # no Apple GPU here: the "MPS" copy runs on the CPU
    ctx = ctx_for(overrides, "device=auto", backends=Backends(mps=True, mps_built=True))
    result = check_accelerator(ctx)
    assert result.status is Status.PASS, result
    assert result.data["device"] == "mps" and "matches the CPU" in result.detail
    assert result.data["logit_rel_diff"] == 0.0 and result.data["grad_rel_diff"] == 0.0
    forward = check_forward(ctx)
    assert forward.status is Status.PASS and forward.data["device"] == "cpu"


def test_broken_mps_backend_fails_with_the_cpu_fallback_hint(overrides: list[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # On the meta device ops run but no value can come back: the small op fails as a broken backend would.
    monkeypatch.setattr(accelerator, "MPS_DEVICE", "meta")
    result = check_accelerator(ctx_for(overrides, "device=auto", backends=Backends(mps=True, mps_built=True)))
    assert result.status is Status.FAIL and "small op failed" in result.detail
    assert "device: cpu" in result.hint


def test_mps_asked_for_but_unavailable_fails(overrides: list[str]) -> None:
    result = check_accelerator(ctx_for(overrides, "device=mps", backends=Backends(mps=False, mps_built=True)))
    assert result.status is Status.FAIL and "MPS was asked for" in result.detail and "device: auto" in result.hint


def test_simulated_cuda_reports_name_memory_and_precision(overrides: list[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU here: the properties torch would read from the driver are given, and the op runs on the CPU.
    monkeypatch.setattr(accelerator, "CUDA_DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(name="NVIDIA H100 80GB HBM3"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (70 << 30, 80 << 30))
    backends = Backends(cuda=True, cuda_bf16=True, cuda_name="NVIDIA H100 80GB HBM3", cuda_count=1)
    ctx = ctx_for(overrides, "device=auto", backends=backends)
    result = check_accelerator(ctx)
    assert result.status is Status.PASS
    assert "NVIDIA H100 80GB HBM3, 80.0 GiB (70.0 GiB free)" in result.detail
    assert result.data["precision"] == "bf16 autocast"  # train.amp: auto turns AMP on for CUDA
    assert check_forward(ctx).status is Status.PASS


def test_parity_verdict_applies_the_tolerances() -> None:
    close = Parity(logit_diff=2e-4, logit_scale=5.0, grad_rel_diff=1e-3)
    far_logits = Parity(logit_diff=0.5, logit_scale=5.0, grad_rel_diff=1e-3)
    far_grads = Parity(logit_diff=0.0, logit_scale=5.0, grad_rel_diff=0.2)
    nan = Parity(logit_diff=float("nan"), logit_scale=5.0, grad_rel_diff=0.0)
    assert parity_verdict(close, "m", "fix").status is Status.PASS
    for bad in (far_logits, far_grads, nan):
        verdict = parity_verdict(bad, "m", "fix")
        assert verdict.status is Status.FAIL and "disagrees with the CPU" in verdict.detail


# --------------------------------------------------------------------------- workers


def test_workers_start_and_deliver_every_item(overrides: list[str]) -> None:
    result = check_workers(ctx_for(overrides, "data.num_workers=2"))
    assert result.status is Status.PASS, result
    assert result.data["workers"] == 2 and result.data["started"] >= 1


def test_zero_workers_pass_without_starting_any(overrides: list[str]) -> None:
    result = check_workers(ctx_for(overrides, "data.num_workers=0"))
    assert result.status is Status.PASS and result.data["workers"] == 0

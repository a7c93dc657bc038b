"""The environment doctor (SPEC §9): `sustain doctor` and `training_diagnostics.py`.

Every check is a function `check_*(ctx) -> CheckResult` wrapped by `@check`
(`core`), which guarantees a result. The report exits 0 when nothing FAILs
and 1 otherwise.

Without a config the doctor checks the environment with `configs/demo.yaml`
(a tiny, randomly initialised model: no download, a few seconds) and skips
the data check; `--config FILE` checks that run's model, transforms, device,
output folder and data. `--json` writes the report to stdout and the
human-readable lines to stderr, so `sustain doctor --json > report.json` works.

Checks that need a model share one instance, built once on the CPU.

One module a job: `core` (results, report, context, `@check`), `environment`
(PyTorch and NumPy; the probe fix_environment.sh runs), `accelerator` (CUDA,
MPS parity, CPU), `model_checks` (model, transforms, forward pass),
`data_checks` (data, output folder, workers), `doctor` (running and reporting).
"""

from .accelerator import Parity, forward_backward_parity, parity_verdict
from .core import CheckResult, DiagnosticReport, DoctorContext, Status, check
from .doctor import CHECKS, format_result, format_summary, run_cli, run_diagnostics
from .environment import environment_probe, numpy_repair_reason, torch_numpy_roundtrip, versions

__all__ = [
    "CHECKS", "CheckResult", "DiagnosticReport", "DoctorContext", "Parity", "Status", "check",
    "environment_probe", "format_result", "format_summary", "forward_backward_parity", "numpy_repair_reason",
    "parity_verdict", "run_cli", "run_diagnostics", "torch_numpy_roundtrip", "versions",
]

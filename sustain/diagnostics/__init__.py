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

Other rooms import only the names below (tests/test_architecture.py checks it); each is imported on
first use, so importing the package costs nothing.
"""

from __future__ import annotations

from ..utils import lazy_offers

# --- offers (generated from the imports of other rooms; keep sorted) ---
_OFFERS = {
    'CHECKS': 'doctor',
    'CheckResult': 'core',
    'DiagnosticReport': 'core',
    'DoctorContext': 'core',
    'Parity': 'accelerator',
    'Status': 'core',
    'check': 'core',
    'environment_probe': 'environment',
    'format_result': 'doctor',
    'format_summary': 'doctor',
    'forward_backward_parity': 'accelerator',
    'numpy_repair_reason': 'environment',
    'parity_verdict': 'accelerator',
    'run_cli': 'doctor',
    'run_diagnostics': 'doctor',
    'torch_numpy_roundtrip': 'environment',
    'versions': 'environment',
}
# --- end offers ---

__all__ = sorted(_OFFERS)
__getattr__ = lazy_offers(__name__, _OFFERS)

"""The PyTorch installation check and the NumPy decision it shares with fix_environment.sh.

`environment_probe` is what fix_environment.sh runs first: versions, the
accelerator, and exit code 3 when NumPy needs repair.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from collections.abc import Callable

from ..device import detect_backends, plan_device
from .core import CheckResult, DoctorContext, check, failed, passed, warned

NUMPY_FIX = "run ./fix_environment.sh (it installs 'numpy<2.0' into the project's environment), or: pip install 'numpy<2.0'"
PACKAGES = ("torch", "torchvision", "timm", "numpy")


def versions() -> dict[str, str | None]:
    """Python and the installed versions of the key packages, read without importing them."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            found[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            found[pkg] = None
    return found


def torch_numpy_roundtrip() -> None:
    """Pass arrays NumPy → torch → NumPy; raise if they cannot cross or come back changed.

    This is where the NumPy 2 ABI break shows: a torch built against NumPy 1.x
    either fails to import with NumPy 2, or raises "Numpy is not available" here.
    """
    import numpy as np
    import torch

    original = np.arange(6, dtype=np.float32).reshape(2, 3)
    shared = torch.from_numpy(original)
    shared.mul_(2)  # from_numpy shares memory: NumPy must see the change
    back = (shared + 1).numpy()
    expected = np.arange(6, dtype=np.float32).reshape(2, 3) * 2
    if not (np.array_equal(original, expected) and np.array_equal(back, expected + 1) and back.dtype == np.float32):
        raise RuntimeError("values or dtype changed in the torch↔NumPy round trip")


def numpy_problem(vers: dict[str, str | None] | None = None,
                  roundtrip: Callable[[], None] = torch_numpy_roundtrip) -> tuple[bool, str] | None:
    """The one NumPy decision, for doctor and the repair script: None when NumPy is fine (or torch is
    missing: nothing NumPy can fix), else (broken, reason). Broken: the torch↔NumPy round trip fails
    or NumPy is missing; not broken: it works, but NumPy ≥ 2 is installed against the project's pin."""
    vers = vers or versions()
    if vers.get("torch") is None:
        return None
    if vers.get("numpy") is None:
        return True, "NumPy is not installed"
    try:
        roundtrip()
    except Exception as exc:
        return True, f"the torch↔NumPy round trip failed ({type(exc).__name__}: {exc})"
    if _major(vers["numpy"]) >= 2:
        return False, f"NumPy {vers['numpy']} is installed; the project pins numpy<2.0"
    return None


def numpy_repair_reason(vers: dict[str, str | None] | None = None,
                        roundtrip: Callable[[], None] = torch_numpy_roundtrip) -> str | None:
    """Why NumPy should be reinstalled as 'numpy<2.0', or None when it is fine (or torch is missing)."""
    problem = numpy_problem(vers, roundtrip)
    return problem[1] if problem else None


def _major(version: str | None) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


@check("PyTorch installation")
def check_pytorch(ctx: DoctorContext) -> CheckResult:
    vers = versions()
    missing = [p for p in PACKAGES if vers[p] is None]
    shown = ", ".join(f"{k} {v}" for k, v in vers.items() if v)
    if missing:
        return failed(f"not installed: {', '.join(missing)} ({shown})",
                      "run `make venv` (or pip install -r requirements.txt) and use that environment",
                      versions=vers)
    problem = numpy_problem(vers)
    if problem and problem[0]:
        return failed(f"{shown}; {problem[1]}",
                      f"NumPy {vers['numpy']} does not work with this torch build (the NumPy 2 ABI break): {NUMPY_FIX}",
                      versions=vers)
    if problem:
        return warned(f"{shown}; round trip OK, but {problem[1]}", NUMPY_FIX, versions=vers)
    return passed(f"{shown}; torch↔NumPy round trip OK", versions=vers)


def environment_probe() -> int:
    """For fix_environment.sh: print the versions and the accelerator; return 3 when NumPy needs repair."""
    vers = versions()
    out = sys.stdout
    out.write(f"Python {vers['python']} at {sys.executable}\n")
    out.write("Packages: " + ", ".join(f"{p} {vers[p] or 'MISSING'}" for p in PACKAGES) + "\n")
    try:
        plan = plan_device("auto", detect_backends())
        out.write(f"Accelerator: {plan.type} ({plan.name})\n")
    except Exception as exc:
        out.write(f"Accelerator: unknown (torch cannot be used: {type(exc).__name__}: {exc})\n")
    reason = numpy_repair_reason(vers)
    if reason:
        out.write(f"NumPy needs repair: {reason}\n")
        return 3
    out.write("NumPy: OK (the torch↔NumPy round trip works)\n")
    return 0

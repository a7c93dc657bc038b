"""What every doctor check shares: the result type, the report, the context and the `@check` wrapper.

`@check` makes a check total: an exception becomes a FAIL that names it, and a
check that returns anything else (the seed's bug was a check returning None,
which made the script always exit 1) becomes a FAIL that says so.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..config import Config
from ..device import Backends, detect_backends
from ..errors import RunFailed, SustainError
from ..taxonomy import Taxonomy, build_taxonomy

log = logging.getLogger("sustain.diagnostics")


class Status(str, Enum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


ICONS = {Status.PASS: "✅", Status.WARN: "⚠️ ", Status.FAIL: "❌"}


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    hint: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "detail": self.detail, "hint": self.hint,
                "data": self.data}


def passed(detail: str, **data: Any) -> CheckResult:
    return CheckResult("", Status.PASS, detail, None, data)


def warned(detail: str, hint: str, **data: Any) -> CheckResult:
    return CheckResult("", Status.WARN, detail, hint, data)


def failed(detail: str, hint: str, **data: Any) -> CheckResult:
    return CheckResult("", Status.FAIL, detail, hint, data)


@dataclass
class DiagnosticReport:
    results: list[CheckResult]
    config: str
    versions: dict[str, str | None]

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status is Status.FAIL]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def counts(self) -> dict[str, int]:
        tally = Counter(r.status for r in self.results)
        return {s.value: tally.get(s, 0) for s in Status}

    def result(self, name: str) -> CheckResult:
        return next(r for r in self.results if r.name == name)

    def raise_if_failed(self) -> None:
        """Stop a notebook's Run All on a FAIL, naming each failure and its fix."""
        if self.failures:
            lines = [f"{r.name}: {r.detail} → {r.hint}" for r in self.failures]
            raise RunFailed(f"{len(lines)} diagnostic check(s) failed:\n  " + "\n  ".join(lines),
                            "fix them (./fix_environment.sh repairs NumPy), restart the kernel and run again")

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "exit_code": self.exit_code, "config": self.config, "counts": self.counts(),
                "versions": self.versions, "checks": [r.to_dict() for r in self.results]}


# --------------------------------------------------------------------------- context


class DoctorContext:
    """What the checks share: the config, the machine's backends and one model, built lazily."""

    def __init__(self, cfg: Config, *, backends: Backends | None = None) -> None:
        self.cfg = cfg
        self._backends = backends
        self._model: Any = None
        self._model_error: BaseException | None = None

    @functools.cached_property
    def taxonomy(self) -> Taxonomy:
        return build_taxonomy(**self.cfg.taxonomy.model_dump())

    @property
    def backends(self) -> Backends:
        if self._backends is None:
            self._backends = detect_backends()
        return self._backends

    def model(self):
        """The configured model on the CPU; a creation error is raised again for every caller."""
        if self._model is None and self._model_error is None:
            try:
                from ..model import build_model

                self._model = build_model(self.cfg.model, self.taxonomy.num_classes, "cpu")
            except Exception as exc:
                self._model_error = exc
        if self._model_error is not None:
            raise ModelUnavailable(self._model_error)
        return self._model

    @functools.cached_property
    def data_config(self) -> dict[str, Any]:
        from ..transforms import resolve_data_config

        return resolve_data_config(self.model(), self.cfg.model)

    @property
    def input_size(self) -> int:
        return int(self.data_config["input_size"][-1])


class ModelUnavailable(Exception):
    """A check needs the model, and it could not be created (the model check says why)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"not run: the model could not be created ({type(cause).__name__}: {cause})")
        self.cause = cause


# --------------------------------------------------------------------------- the check wrapper

Check = Callable[[DoctorContext], CheckResult]


def check(name: str) -> Callable[[Callable[[DoctorContext], CheckResult]], Check]:
    """Make a check total: whatever happens inside, the caller gets a named CheckResult."""

    def decorate(fn: Callable[[DoctorContext], CheckResult]) -> Check:
        @functools.wraps(fn)
        def run(ctx: DoctorContext) -> CheckResult:
            try:
                result = fn(ctx)
            except ModelUnavailable as exc:
                return CheckResult(name, Status.FAIL, str(exc), "fix the 'Model availability' check first")
            except SustainError as exc:
                return CheckResult(name, Status.FAIL, exc.message, exc.hint or "see the message above")
            except ImportError as exc:  # torch/timm/NumPy broken: the PyTorch check has the real fix
                return CheckResult(name, Status.FAIL, f"{type(exc).__name__}: {exc}",
                                   "a required package cannot be imported: fix the 'PyTorch installation' check first")
            except Exception as exc:
                log.debug("check %r raised", name, exc_info=True)
                return CheckResult(name, Status.FAIL, f"{type(exc).__name__}: {exc}",
                                   "unexpected error: rerun with `sustain -v doctor` to see the traceback")
            if not isinstance(result, CheckResult):
                return CheckResult(name, Status.FAIL, f"internal error: the check returned {result!r} instead of a result",
                                   "this is a bug in sustain.diagnostics; please report it")
            return dataclasses.replace(result, name=name)

        return run

    return decorate

"""The environment doctor (SPEC §9): `sustain doctor` and `training_diagnostics.py`.

Every check is a function `check_*(ctx) -> CheckResult` wrapped by `@check`,
which guarantees a result: an exception becomes a FAIL that names it, and a
check that returns anything else (the seed's bug was a check returning None,
which made the script always exit 1) becomes a FAIL that says so. The report
exits 0 when nothing FAILs and 1 otherwise.

Without a config the doctor checks the environment with `configs/demo.yaml`
(a tiny, randomly initialised model: no download, a few seconds) and skips
the data check; `--config FILE` checks that run's model, transforms, device,
output folder and data. `--json` writes the report to stdout and the
human-readable lines to stderr, so `sustain doctor --json > report.json` works.

Checks that need a model share one instance, built once on the CPU.
Accelerator decisions go through the pure `device.plan_device`, so the MPS
branch can be exercised with simulated `Backends` on any machine.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib.metadata
import json
import logging
import math
import platform
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .config import Config, load_config
from .device import (
    Backends,
    detect_backends,
    in_jupyter,
    plan_device,
    plan_num_workers,
    plan_precision,
)
from .errors import RunFailed, SustainError, UsageError
from .taxonomy import Taxonomy, build_taxonomy
from .utils import cpu_count, finite_or_none

log = logging.getLogger("sustain.diagnostics")

NUMPY_FIX = "run ./fix_environment.sh (it installs 'numpy<2.0' into the project's environment), or: pip install 'numpy<2.0'"
# The devices the CUDA and MPS checks run on; tests without that hardware point them at the CPU.
CUDA_DEVICE = "cuda"
MPS_DEVICE = "mps"
PARITY_LOGIT_TOL = 1e-3  # max |logit difference|, relative to the largest logit (at least 1)
PARITY_GRAD_TOL = 1e-2  # ‖g_device − g_cpu‖ / ‖g_cpu‖
FORWARD_BATCH = 2
DISK_WARN_BYTES = 2 << 30  # warn below 2 GiB free even when the estimate fits
PACKAGES = ("torch", "torchvision", "timm", "numpy")


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
                from .model import build_model

                self._model = build_model(self.cfg.model, self.taxonomy.num_classes, "cpu")
            except Exception as exc:
                self._model_error = exc
        if self._model_error is not None:
            raise ModelUnavailable(self._model_error)
        return self._model

    @functools.cached_property
    def data_config(self) -> dict[str, Any]:
        from .transforms import resolve_data_config

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


# --------------------------------------------------------------------------- PyTorch installation


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


# --------------------------------------------------------------------------- accelerator


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


# --------------------------------------------------------------------------- model, transforms, forward


def weights_source(pretrained: bool | str) -> str:
    if pretrained is True:
        return "timm hub (pretrained: true; downloaded once, then cached)"
    if pretrained is False:
        return "random initialisation (pretrained: false)"
    return f"local file {pretrained}"


@check("Model availability")
def check_model(ctx: DoctorContext) -> CheckResult:
    mc = ctx.cfg.model
    try:
        model = ctx.model()
    except ModelUnavailable as exc:
        raise exc.cause from None  # build_model's own message and hint (unknown name, missing file, offline)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return passed(f"{mc.name}: {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable), "
                  f"{ctx.taxonomy.num_classes} classes; weights: {weights_source(mc.pretrained)}",
                  model=mc.name, parameters=total, trainable=trainable, weights=weights_source(mc.pretrained))


@check("Transform pipeline")
def check_transforms(ctx: DoctorContext) -> CheckResult:
    from .transforms import build_eval_transform, build_train_transform, validate_transforms

    data_cfg = ctx.data_config
    size = ctx.input_size
    validate_transforms(build_train_transform(data_cfg, ctx.cfg.data), build_eval_transform(data_cfg), size)
    mean = ", ".join(f"{m:.3f}" for m in data_cfg["mean"])
    std = ", ".join(f"{s:.3f}" for s in data_cfg["std"])
    return passed(f"train ({ctx.cfg.data.augment}) and eval transforms give float32 [3, {size}, {size}]; "
                  f"mean ({mean}), std ({std}), {data_cfg['interpolation']}",
                  input_size=size, mean=list(data_cfg["mean"]), std=list(data_cfg["std"]),
                  interpolation=data_cfg["interpolation"])


@check("Forward pass")
def check_forward(ctx: DoctorContext) -> CheckResult:
    import torch
    import torch.nn.functional as F

    plan = plan_device(ctx.cfg.device, ctx.backends)
    device = {"cuda": CUDA_DEVICE, "mps": MPS_DEVICE}.get(plan.type, "cpu")
    cpu_model = ctx.model()
    model = cpu_model if device == "cpu" else copy.deepcopy(cpu_model).to(device)
    classes = ctx.taxonomy.num_classes
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(FORWARD_BATCH, 3, ctx.input_size, ctx.input_size, generator=gen).to(device)
    y = torch.randint(0, classes, (FORWARD_BATCH,), generator=gen).to(device)
    model.train()
    model.zero_grad(set_to_none=True)
    try:
        out = model(x)
        shape = tuple(out.shape)
        if shape != (FORWARD_BATCH, classes):
            return failed(f"output shape {list(shape)}, expected [{FORWARD_BATCH}, {classes}]",
                          "the classifier head must have one output per taxonomy class; check model.name "
                          "and taxonomy.classes", shape=list(shape))
        loss = F.cross_entropy(out.float(), y)
        if not torch.isfinite(loss):
            return failed(f"the loss is {loss.item()} on random input",
                          "the model produces non-finite outputs; check the weights file and model settings")
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads or not all(torch.isfinite(g).all() for g in grads):
            return failed("backward produced no gradients or non-finite ones",
                          "check that the model's parameters require grad and the weights are finite")
        grad_norm = float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])))
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    return passed(f"on {device}: output [{FORWARD_BATCH}, {classes}], loss {loss.item():.4f}, backward OK "
                  f"(grad norm {grad_norm:.3g})", device=device, loss=float(loss.item()), grad_norm=grad_norm)


# --------------------------------------------------------------------------- data


@check("Data")
def check_data(ctx: DoctorContext) -> CheckResult:
    from .data.labels import compile_label_map
    from .data.walk import count_images

    cfg = ctx.cfg
    sources = [s for s in cfg.data.sources if s.enabled]
    if not sources:
        return failed("every source is disabled (enabled: false)", "enable at least one source in data.sources")
    missing = [(s.name, cfg.source_root(s).absolute()) for s in sources if not cfg.source_root(s).is_dir()]
    if missing:
        listed = "; ".join(f"source {name!r}: {root}" for name, root in missing)
        return failed(f"data root not found: {listed}",
                      "download the data (sustain data download --config FILE), generate the demo "
                      "(sustain data demo --out data/demo), or fix data.root / the source's root",
                      missing={name: str(root) for name, root in missing})
    per_source: dict[str, dict[str, Any]] = {}
    unmapped: Counter[str] = Counter()
    for src in sources:
        root = cfg.source_root(src)
        count = count_images(root, compile_label_map(src, ctx.taxonomy), src.exclude)
        unmapped.update({f"{src.name}:{folder}": n for folder, n in count.unmapped_folders})
        per_source[src.name] = {"root": str(root.absolute()), "files": count.images,
                                "labelled": count.labelled, "dropped": count.dropped, "unmapped": count.unmapped}
    data = {"sources": per_source, "unmapped_folders": dict(unmapped.most_common())}
    summary = "; ".join(_source_line(name, s) for name, s in per_source.items())
    empty = [name for name, s in per_source.items() if s["labelled"] == 0]
    if empty:
        return failed(f"no labelled image files in {', '.join(empty)} ({summary})",
                      "check the source's root and label_map: its folders must map to classes or sets", **data)
    if unmapped:
        top = ", ".join(f"{k} ({n})" for k, n in unmapped.most_common(5))
        detail = f"{summary}; unmapped folders: {top}"
        hint = "add these folders to the source's label_map, or map them to null to drop them"
        if cfg.data.strict:
            return failed(detail, hint + " (data.strict is on: ingestion refuses unmapped files)", **data)
        return warned(detail, hint, **data)
    return passed(f"{summary}; no unmapped folders", **data)


def _source_line(name: str, counts: dict[str, Any]) -> str:
    extra = "".join(f", {counts[k]} {k}" for k in ("dropped", "unmapped") if counts[k])
    return f"{name}: {counts['labelled']} of {counts['files']} image files labelled{extra}"


# --------------------------------------------------------------------------- output folder, workers


def estimated_artifact_bytes(parameters: int) -> int:
    """Disk a run needs: best .pth, last.pth with two AdamW moments, the safetensors export,
    one temporary copy during an atomic write, plus ~50 MB of plots, manifest and reports."""
    return parameters * 4 * 7 + (50 << 20)


def disk_verdict(free: int, needed: int) -> Status:
    if free < needed:
        return Status.FAIL
    if free < max(2 * needed, DISK_WARN_BYTES):
        return Status.WARN
    return Status.PASS


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor)


@check("Output folder")
def check_output_folder(ctx: DoctorContext) -> CheckResult:
    out = Path(ctx.cfg.output_dir).expanduser().absolute()
    base = _nearest_existing(out)
    fix = "set output_dir in the config (or pass --output DIR) to a folder you can write"
    if not base.is_dir():
        return failed(f"output folder {out} cannot be created: {base} is a file, not a folder", fix, path=str(out))
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        return failed(f"output folder {out} is not writable: cannot create a file in {base} ({exc.strerror})", fix,
                      path=str(out))
    free = shutil.disk_usage(base).free
    try:
        params = sum(p.numel() for p in ctx.model().parameters())
    except ModelUnavailable:
        params = 0
    needed = estimated_artifact_bytes(params)
    where = str(out) if out.exists() else f"{out} (will be created in {base})"
    numbers = f"{free / 2**30:.1f} GiB free, a run needs about {needed / 2**30:.2f} GiB"
    verdict = disk_verdict(free, needed)
    data = {"path": str(out), "free_bytes": free, "needed_bytes": needed}
    if verdict is Status.FAIL:
        return failed(f"{where}: writable, but only {numbers}", f"free disk space, or {fix} on another disk", **data)
    if verdict is Status.WARN:
        return warned(f"{where}: writable; {numbers}", "free some disk space before a long run", **data)
    return passed(f"{where}: writable; {numbers}", **data)


class ProbeDataset:
    """A picklable dataset for the worker check: item i is (i, the id of the worker that made it)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, int]:
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        return i, -1 if info is None else info.id


@check("DataLoader workers")
def check_workers(ctx: DoctorContext) -> CheckResult:
    import torch.multiprocessing as mp
    from torch.utils.data import DataLoader

    plan = plan_device(ctx.cfg.device, ctx.backends)
    workers = plan_num_workers(ctx.cfg.data.num_workers, plan.type, cpu_count=cpu_count(),
                               in_jupyter=in_jupyter(), platform=sys.platform)
    if workers == 0:
        return passed("num_workers resolves to 0: images load in the training process (no workers to start)",
                      workers=0)
    n = 4 * workers
    loader = DataLoader(ProbeDataset(n), batch_size=2, num_workers=workers, timeout=120)
    items = [(int(i), int(w)) for batch in loader for i, w in zip(*batch, strict=True)]
    seen = sorted(i for i, _ in items)
    if seen != list(range(n)):
        return failed(f"{workers} workers returned items {seen}, expected 0..{n - 1}",
                      "set data.num_workers: 0 to load in the training process")
    started = len({w for _, w in items})
    method = mp.get_start_method(allow_none=True) or mp.get_context().get_start_method()
    return passed(f"{started} of {workers} worker(s) started ({method}) and delivered {n} items",
                  workers=workers, started=started, start_method=method)


CHECKS: tuple[Check, ...] = (check_pytorch, check_accelerator, check_model, check_transforms, check_forward,
                             check_data, check_output_folder, check_workers)


# --------------------------------------------------------------------------- running and reporting


def default_config_path() -> Path:
    """configs/demo.yaml of this checkout (or of the working directory)."""
    for base in (Path(__file__).resolve().parents[1], Path.cwd()):
        candidate = base / "configs" / "demo.yaml"
        if candidate.is_file():
            return candidate
    raise UsageError("No --config given and configs/demo.yaml was not found",
                     "run from the project folder, or pass --config FILE")


def run_diagnostics(config: Config | str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                    include_data: bool | None = None, backends: Backends | None = None) -> DiagnosticReport:
    """Run every check, logging each result and then the DIAGNOSTIC SUMMARY.

    `config`: a Config, a YAML path, or None for configs/demo.yaml. The data
    check runs when a config is given, unless `include_data` says otherwise.
    `backends` replaces the detected hardware (tests simulate MPS with it).
    """
    if config is None:
        path = default_config_path()
        cfg, label = load_config(path, overrides), f"{path} (default)"
        include_data = bool(include_data)
    elif isinstance(config, Config):
        cfg, label = config, "<Config object>"
    else:
        cfg, label = load_config(config, overrides), str(config)
    if include_data is None:
        include_data = True
    ctx = DoctorContext(cfg, backends=backends)
    log.info("🩺 Sustain diagnostics (config: %s)", label)
    results = []
    for run in CHECKS:
        if run is check_data and not include_data:
            continue
        result = run(ctx)
        results.append(result)
        for line in format_result(result):
            log.info(line)
    report = DiagnosticReport(results, label, versions())
    for line in format_summary(report, data_checked=include_data):
        log.info(line)
    return report


def format_result(result: CheckResult) -> list[str]:
    lines = [f"{ICONS[result.status]} [{result.status.value}] {result.name}: {result.detail}"]
    if result.hint and result.status is not Status.PASS:
        lines.append(f"      → {result.hint}")
    return lines


def format_summary(report: DiagnosticReport, *, data_checked: bool = True) -> list[str]:
    rule = "=" * 60
    lines = ["", rule, "DIAGNOSTIC SUMMARY", rule]
    lines += [f"  {ICONS[r.status]} {r.status.value:<4}  {r.name}" for r in report.results]
    if not data_checked:
        lines.append("  (data not checked: pass --config FILE to check a run's data)")
    c = report.counts()
    lines.append(f"  {c['PASS']} passed, {c['WARN']} warning(s), {c['FAIL']} failed")
    for r in report.failures:
        lines.append(f"  ❌ {r.name}: {r.hint}")
    lines.append("  Environment ready: nothing failed." if report.ok else "  Not ready: fix the failures above.")
    lines.append(rule)
    return lines


@contextlib.contextmanager
def _human_output_to_stderr() -> Iterator[None]:
    """Keep stdout for the JSON report: log handlers and prints go to stderr meanwhile."""
    moved = []
    for logger in (logging.getLogger("sustain"), logging.getLogger()):
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                handler.setStream(sys.stderr)
                moved.append(handler)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler in moved:
            handler.setStream(sys.stdout)


def run_cli(config: str | Path | None = None, as_json: bool = False) -> int:
    """`sustain doctor` / `training_diagnostics.py`: 0 when nothing FAILs, else 1."""
    if as_json:
        with _human_output_to_stderr():
            report = run_diagnostics(config)
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
        sys.stdout.flush()
    else:
        report = run_diagnostics(config)
    return report.exit_code


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


__all__ = [
    "CHECKS", "CheckResult", "DiagnosticReport", "DoctorContext", "Parity", "Status", "check",
    "environment_probe", "format_result", "format_summary", "forward_backward_parity", "numpy_repair_reason",
    "parity_verdict", "run_cli", "run_diagnostics", "torch_numpy_roundtrip", "versions",
]

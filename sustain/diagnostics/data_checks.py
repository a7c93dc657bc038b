"""What a run reads and writes: the data sources, the output folder's space, the loader workers."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from ..device import in_jupyter, plan_device, plan_num_workers
from ..utils import cpu_count
from .core import (
    CheckResult,
    DoctorContext,
    ModelUnavailable,
    Status,
    check,
    failed,
    passed,
    warned,
)

DISK_WARN_BYTES = 2 << 30  # warn below 2 GiB free even when the estimate fits


@check("Data")
def check_data(ctx: DoctorContext) -> CheckResult:
    from ..data import compile_label_map, count_images

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

"""The end of a training run: `run.json`, the final evaluation, the checklist and the report; or, when a
stop signal ended it (`Interrupted`), the run.json that says where and why."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torchvision

from ..artifacts import RunRecord
from ..evaluate import trends
from . import console
from .checkpoints import record_calibration
from .interrupts import Interrupted
from .loop_state import LoopState
from .setup import Setup
from .trainer import Trainer

log = logging.getLogger("sustain.training.engine")


@dataclass
class RunResult:
    ok: bool
    output_dir: Path
    epochs_completed: int
    history: dict[str, list[Any]]
    best_checkpoint: Path | None = None
    best_epoch: int | None = None
    best_val_acc: float | None = None
    best_macro_f1: float | None = None
    stop_reason: str | None = None
    checklist: list[dict[str, Any]] = field(default_factory=list)


def interrupted(trainer: Trainer, state: LoopState, setup: Setup, stop: Interrupted) -> None:
    """A stop signal ended the run: run.json says where and why, tracking hears it, and DDP closes."""
    if trainer.dist.is_main:
        record = run_record(trainer, state, setup, {})
        record.update(status="interrupted", stop_reason=stop.reason, **{k: f() for k, f in trainer.hooks.stopped.items()})
        RunRecord.from_dict(record).write(trainer.out_dir)
    for hook in trainer.hooks.interrupt:
        hook(stop.reason)
    trainer.dist.close()


def finish(trainer: Trainer, state: LoopState, setup: Setup, started: float) -> RunResult:
    """The best weights on val and test, the checklist, run.json, the report and tracking's last word."""
    out = trainer.out_dir
    best_path = out / state.best.path if state.best.path else None
    result = RunResult(ok=not state.failed, output_dir=out, epochs_completed=state.epoch, history=state.history.to_dict(),
                       best_checkpoint=best_path, best_epoch=state.best.epoch, best_val_acc=state.best.val_acc,
                       best_macro_f1=state.best.macro_f1, stop_reason=state.stop_reason)
    if not trainer.dist.is_main:
        return result
    t = time.perf_counter()
    final = _final_evaluation(trainer, state) if not state.failed and best_path is not None else {}
    setup.timings["final_evaluation_seconds"] = time.perf_counter() - t
    setup.timings["total_seconds"] = time.perf_counter() - started

    # The checklist needs only the checkpoints and the history, so it is ready before the
    # report, which then shows it.
    totals = trainer.guards.state.totals
    checklist = trends.success_checklist(
        state.history.to_dict(),
        {"completed": not state.failed, "stop_reason": state.stop_reason, "artifacts": trends.artifacts_present(out),
         "skipped_steps": totals["skipped"], "total_steps": totals["steps"]},
        skipped_max=trainer.cfg.guards.warn_pct / 100.0,
    )
    for line in trends.format_checklist(checklist):
        log.info(line)
    calibration = final.pop("calibration", None)  # its own key in run.json
    record = run_record(trainer, state, setup, final)
    record.update(checklist=checklist, report_error=None, calibration=calibration)
    RunRecord.from_dict(record).write(out)  # the report reads it
    if not state.failed:
        from ..report import build_report

        t = time.perf_counter()
        try:
            log.info("✓ Report written: %s", build_report(out))
        except Exception as exc:  # a plotting problem must not hide a finished training; it is reported
            record["report_error"] = f"{type(exc).__name__}: {exc}"
            log.warning("⚠️  Report not built: %s (rebuild it with `sustain report %s`)", record["report_error"], out)
        record["timings"]["report_seconds"] = round(time.perf_counter() - t, 3)  # after total_seconds: its own line
        RunRecord.from_dict(record).write(out)
    extra: dict[str, Any] = {}
    for hook in trainer.hooks.run_end:  # tracking: final metrics and artifacts; its counts go into run.json
        extra.update(hook(out, record))
    if extra:
        record.update(extra)
        RunRecord.from_dict(record).write(out)
    result.checklist = checklist
    console.run_ended(state)
    return result


def _final_evaluation(trainer: Trainer, state: LoopState) -> dict[str, Any]:
    log.info("📊 Final evaluation of the best weights (epoch %s)", state.best.epoch)
    from ..evaluate import write_final_evaluation  # loaded by loop.validate() already

    settings = {"temperature": trainer.cfg.calibration.temperature,
                "accept_accuracy": trainer.cfg.eval.accept_accuracy}
    reports = write_final_evaluation(trainer.eval_model(), trainer.loaders.final, trainer.taxonomy, trainer.sources,
                                     trainer.out_dir, trainer.device, trainer.autocast_factory(),
                                     checkpoint=trainer.out_dir, calibration=settings)
    final = {split: {k: r.get(k) for k in ("accuracy", "macro_f1", "n_fine", "n_set", "set_accuracy",
                                            "expected_calibration_error", "expected_calibration_error_uncalibrated")}
             for split, r in reports.items()}
    chosen = next((r["calibration"] for r in reports.values() if "calibration" in r), None)
    if chosen is not None:  # predict, evaluate and export read T and the threshold from best_model.json
        record_calibration(trainer.out_dir, chosen)
        final["calibration"] = {**chosen, "accept_or_review": {s: r.get("accept_or_review") for s, r in reports.items()}}
    return final


def run_record(trainer: Trainer, state: LoopState, setup: Setup, final: dict[str, Any]) -> dict[str, Any]:
    """run.json's fields (`RunRecord`), before the end adds its checklist or an interruption its reason."""
    local_paths = _local_paths(trainer)
    guard = trainer.guards.state
    return {
        "status": "failed" if state.failed else "completed",
        "stop_reason": state.stop_reason,
        "config": trainer.cfg.to_dict(),
        "model_name": trainer.cfg.model.name,
        "classes": list(trainer.taxonomy.classes),
        "taxonomy": trainer.taxonomy.to_dict(),
        "normalisation": {k: list(v) if isinstance(v, tuple) else v for k, v in setup.data_config.items()},
        "device": {"type": trainer.plan.type, "name": trainer.plan.name, "precision": trainer.precision.label,
                   "precision_plan": trainer.precision.record(),
                   "amp_on_at_end": guard.amp_on, "channels_last": trainer.channels_last,
                   "world_size": trainer.dist.world, "num_workers": setup.workers},
        "seed": trainer.cfg.seed,
        "timings": {k: round(v, 3) for k, v in setup.timings.items()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "timm": timm.__version__, "numpy": np.__version__},
        "manifest_hash": setup.lake.manifest_hash,
        "data_summary": setup.lake.summary,
        "epochs_completed": state.epoch,
        "best": state.best.to_dict(),
        "final_evaluation": final,
        "health": {"totals": dict(guard.totals), "escalations": list(guard.escalations),
                   "per_epoch": list(state.health), "trend_warnings": list(state.trend_warnings)},
        "interruptions": list(state.events),
        "segments": state.all_segments(),
        "local_paths": local_paths,
    }


def _local_paths(trainer: Trainer) -> dict[str, Any]:
    """run.json's only absolute paths: where this machine keeps the run and its data (to resume here)."""
    cfg = trainer.cfg
    return {"run_dir": str(trainer.out_dir.resolve()), "data_root": str(Path(cfg.data.root).expanduser().resolve()),
            "sources": {s.name: str(cfg.source_root(s).resolve()) for s in cfg.data.sources
                        if s.name in trainer.sources}}

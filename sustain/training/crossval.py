"""`sustain crossval` (docs/evaluation.md, "Cross-validation"): K ordinary training runs, one per fold.

The lake is ingested once; `data.folds` plans the folds (grouped stratified k-fold, or
leave-one-source-out). Each fold is a plain `engine.train` run in `OUTPUT/crossval/<scheme>/<fold>/`
whose config names the fold's split assignment (`data.split.assignment`): ingestion takes every
image's split from that file, so the engine itself knows nothing of cross-validation, and each fold
keeps every artifact, bar and resume of a run. When the last fold has finished (or with
`--summarize`), the scheme's folder gets `crossval.json`, `predictions_oof.npz`, `label_issues.csv`
and `report.html`.

Folds are independent: `--fold i` runs one, e.g. as one task of a SLURM job array writing into a
shared output folder; the plan is a pure function of the lake and the settings, so every process
draws the same folds (and `folds.csv` written by one is checked by the others).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..artifacts import (
    CROSSVAL_DIR,
    FOLD_ASSIGNMENT,
    FOLDS_CSV,
    LAST,
    TEST_REPORT,
    ArtifactError,
    CrossvalRecord,
    RunRecord,
)
from ..config import Config, config_from_dict
from ..data import (
    MIN_SOURCE_IMAGES,
    FoldPlan,
    Lake,
    folds_text,
    ingest,
    kfold_plan,
    source_plan,
    val_fraction,
    write_assignment,
)
from ..device import detect_backends, plan_device
from ..errors import ConfigError, RunFailed, UsageError
from ..evaluate import (
    DEFAULT_METHOD,
    label_issue_rows,
    load_predictions,
    predictions_file,
    suspect_labels,
    write_label_issues,
)
from ..evaluate import crossval as cv
from ..taxonomy import build_taxonomy
from ..tracking import log_summary, parent_run
from ..utils import atomic_write_text
from . import console
from .distributed import Distributed

log = logging.getLogger("sustain.training.crossval")

OOF_FILE = predictions_file(cv.OOF_SPLIT)


@dataclass(frozen=True)
class CrossvalOptions:
    scheme: str = "kfold"  # "kfold" | "source"
    folds: int = 5
    resume: str | None = None  # None or "auto"
    only_fold: int | None = None  # --fold i: run this fold only
    summarize_only: bool = False  # --summarize: run no fold, build the summary of the finished ones
    min_images: int = MIN_SOURCE_IMAGES


def run_crossval(cfg: Config, opts: CrossvalOptions) -> CrossvalRecord | None:
    """Run the folds `opts` asks for; the record once every fold of the scheme has finished, else None."""
    console.ensure_console_logging()
    if cfg.data.split.assignment:
        raise ConfigError("data.split.assignment", "crossval plans every fold's split itself: remove this key")
    if cfg.data.split.holdout_sources:
        raise ConfigError("data.split.holdout_sources", "crossval plans every fold's split itself: remove this key "
                          "(`--by source` holds out each source in turn)")
    lake = ingest(cfg, build_taxonomy(**cfg.taxonomy.model_dump()))
    plan = plan_folds(cfg, lake, opts)
    folder = scheme_folder(cfg, plan.scheme)
    _write_folds_csv(folder, lake, plan, keep=opts.resume is not None or opts.only_fold is not None
                     or opts.summarize_only)
    if opts.only_fold is not None and not 0 <= opts.only_fold < len(plan.folds):
        raise UsageError(f"--fold {opts.only_fold}: this scheme has folds 0 to {len(plan.folds) - 1}",
                         f"see {folder / FOLDS_CSV}")
    for fold in plan.folds:
        log.info("  fold %d: %s, %d test images", fold.index, fold.held_out, fold.count("test"))
    if not opts.summarize_only:
        todo = [plan.folds[opts.only_fold]] if opts.only_fold is not None else list(plan.folds)
        log.info("🔁 %s", estimate(cfg, plan, todo, folder, opts.resume))
        parent = parent_run(cfg, folder, plan.scheme)
        # Under torchrun one process group serves every fold: tearing it down and making a new one
        # per fold left the next fold's gloo ranks unable to connect, at random.
        dist = Distributed.from_env()
        if dist.enabled:
            dist.init(plan_device(cfg.device, detect_backends()))
        try:
            for fold in tqdm(todo, desc=f"Crossval ({plan.scheme})", unit="fold", position=0):
                run_fold(cfg, lake, plan, fold.index, folder, opts.resume, parent)
        finally:
            dist.close()
    missing = [f.name for f in plan.folds if not fold_finished(folder / f.name)]
    if missing:
        message = f"{len(plan.folds) - len(missing)} of {len(plan.folds)} folds finished; not yet: {missing}"
        if opts.summarize_only:
            raise UsageError(message, "run them (`--fold i`), then `--summarize` again")
        log.info("⏳ %s. The summary is built when the last one finishes, or with --summarize", message)
        return None
    return summarize(cfg, lake, plan, folder)


def plan_folds(cfg: Config, lake: Lake, opts: CrossvalOptions) -> FoldPlan:
    fraction = val_fraction(cfg.data.split.train, cfg.data.split.val)
    if opts.scheme == "kfold":
        return kfold_plan(lake.rows, opts.folds, cfg.seed, fraction)
    if opts.scheme == "source":
        return source_plan(lake.rows, lake.sources, cfg.seed, fraction, opts.min_images)
    raise UsageError(f"--by {opts.scheme!r}: use kfold or source")


def scheme_folder(cfg: Config, scheme: str) -> Path:
    return Path(cfg.output_dir).expanduser() / CROSSVAL_DIR / scheme


def _write_folds_csv(folder: Path, lake: Lake, plan: FoldPlan, keep: bool) -> None:
    """folds.csv; resuming, one fold or summarizing, an existing one must be this very plan."""
    text = folds_text(lake.rows, plan.test_fold())
    path = folder / FOLDS_CSV
    if keep and path.is_file() and path.read_text(encoding="utf-8") != text:
        raise UsageError(f"{path} was planned from another lake or other settings than this command's",
                         "use the same config, --set values and --folds as the folds already run, or start afresh "
                         "without --resume (or in another output_dir)")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def estimate(cfg: Config, plan: FoldPlan, todo: list, folder: Path, resume: str | None) -> str:
    """The cost line printed at the start: K folds are K trainings."""
    if resume:
        todo = [f for f in todo if not fold_finished(folder / f.name)]
    images = sum(f.count("train") for f in todo)
    line = (f"Crossval {plan.scheme}: {len(todo)} of {len(plan.folds)} folds to train, each a full training run "
            f"(up to {cfg.train.epochs} epochs); {images:,} training images in all, "
            f"{images * cfg.train.epochs:,} image-epochs")
    try:
        previous = RunRecord.read_if_present(cfg.output_dir)
    except ArtifactError as exc:  # an older or edited run.json: no speed to scale from, said so
        log.info("No time estimate from %s: %s", cfg.output_dir, exc)
        previous = None
    if previous is not None:
        seen = previous.data_summary.get("splits", {}).get("train", 0) * max(previous.epochs_completed, 1)
        seconds = previous.timings.get("train_seconds")
        if seen and seconds:
            line += f", about {seconds / seen * images * cfg.train.epochs / 3600:.1f} h at the speed of {cfg.output_dir}"
    return line + ". Make it cheaper with --folds and --set train.epochs=N; spread it with --fold i"


def fold_finished(run_dir: Path) -> bool:
    """A fold is done when its run completed and its test split was scored."""
    if not (run_dir / TEST_REPORT).is_file() or not (run_dir / predictions_file("test")).is_file():
        return False
    record = RunRecord.read_if_present(run_dir)
    return record is not None and record.status == "completed"


def run_fold(cfg: Config, lake: Lake, plan: FoldPlan, index: int, folder: Path, resume: str | None,
             parent: tuple[str, str] | None = None) -> Path:
    """One fold as an ordinary training run; with `resume`, a finished fold is skipped and an
    interrupted one continues at its batch from its last.pth. With `parent` (MLflow's URI and run),
    the fold's MLflow run is its child, in the same store."""
    from .engine import train

    fold = plan.folds[index]
    run_dir = folder / fold.name
    if resume and fold_finished(run_dir):
        log.info("⏭️  %s already finished (%s)", fold.name, run_dir)
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    assignment = write_assignment(run_dir / FOLD_ASSIGNMENT, lake.rows, fold)
    raw = cfg.to_dict()
    raw["output_dir"] = str(run_dir)
    raw["data"]["split"]["assignment"] = str(assignment.resolve())
    if parent is not None:
        raw["tracking"]["mlflow"].update(tracking_uri=parent[0], parent_run_id=parent[1])
    log.info("🔁 %s: held out %s; %d train, %d val, %d test images", fold.name, fold.held_out,
             fold.count("train"), fold.count("val"), fold.count("test"))
    result = train(config_from_dict(raw), resume="auto" if resume and (run_dir / LAST).is_file() else None)
    if not result.ok:
        raise RunFailed(f"Crossval {fold.name} failed: {result.stop_reason}", f"see {run_dir}; rerun with --resume auto")
    return run_dir


# --------------------------------------------------------------------------- the summary


def summarize(cfg: Config, lake: Lake, plan: FoldPlan, folder: Path) -> CrossvalRecord:
    """crossval.json, predictions_oof.npz, label_issues.csv and report.html from the finished folds."""
    entries = [cv.fold_entry(f, _read_json(folder / f.name / TEST_REPORT), f.name) for f in plan.folds]
    oof, fold_of = cv.merge_oof([(f.index, load_predictions(folder / f.name / predictions_file("test")))
                                 for f in plan.folds])
    cv.save_oof(folder / OOF_FILE, oof, fold_of)
    sources: list[dict[str, Any]] = []
    if plan.scheme == "source":
        in_domain, origin = in_domain_accuracy(cfg, folder)
        sources = cv.shift_gaps(entries, in_domain, origin)
    record = CrossvalRecord(
        scheme=plan.scheme, folds=entries, summary=cv.summarize(entries), oof=cv.oof_summary(oof), sources=sources,
        skipped_sources=dict(plan.skipped_sources), label_issues=label_issues(folder, oof),
        settings={"folds": len(plan.folds), "seed": cfg.seed, "epochs": cfg.train.epochs,
                  "val_fraction": round(val_fraction(cfg.data.split.train, cfg.data.split.val), 6),
                  "manifest_hash": lake.manifest_hash})
    record.write(folder)
    log_summary(parent_run(cfg, folder, plan.scheme), record.summary)
    log.info("✓ Crossval %s: accuracy %s over %d folds; %s", plan.scheme, _pct(record.summary["accuracy"]),
             len(entries), folder / record.FILE)
    _build_page(folder)
    return record


def in_domain_accuracy(cfg: Config, folder: Path) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Each source's in-domain accuracy: from a k-fold of the same lake (its out-of-fold predictions),
    else from the test split of the ordinary run in output_dir; ({}, None) when neither exists."""
    kfold = folder.parent / "kfold" / OOF_FILE
    if kfold.is_file():
        sp, _ = cv.load_oof(kfold)
        return cv.oof_summary(sp)["per_source"], "kfold out-of-fold predictions"
    report = _read_json(Path(cfg.output_dir) / TEST_REPORT)
    if report is None:
        log.info("No in-domain accuracy to set beside the out-of-source one: run `sustain crossval` (k-fold) or "
                 "`sustain train` in the same output_dir first for the shift gap")
        return {}, None
    per_source = {name: {"accuracy": s.get("acc"), "n_fine": s.get("n_fine", 0),
                         "accuracy_ci95": cv.wilson(round((s.get("acc") or 0) * s.get("n_fine", 0)), s.get("n_fine", 0))}
                  for name, s in report.get("per_source_accuracy", {}).items()}
    return per_source, f"test split of {cfg.output_dir}"


def label_issues(folder: Path, oof: Any) -> dict[str, Any]:
    """label_issues.csv from the out-of-fold predictions, by the finder `sustain report` uses on val+test
    (`evaluate.suspect_labels`: cleanlab on fine labels, the fixed rule on the mass inside a set)."""
    suspects = suspect_labels([oof])
    write_label_issues(folder, label_issue_rows(suspects))
    return {"method": DEFAULT_METHOD, "n_screened": len(oof.paths), "n_fine": int(oof.fine.sum()),
            "n_issues": len(suspects)}


def _build_page(folder: Path) -> None:
    from ..report import build_crossval_page

    try:
        log.info("✓ Crossval report written: %s", build_crossval_page(folder))
    except Exception as exc:  # a plotting problem must not hide finished folds; it is reported
        log.warning("⚠️  Crossval report not built: %s: %s", type(exc).__name__, exc)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _pct(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "n/a"
    ci = stat["ci95"]
    return f"{100 * stat['mean']:.2f}%" + (f" (95% interval {100 * ci[0]:.2f}–{100 * ci[1]:.2f}%)" if ci else "")

"""Every file Sustain writes, by name, and one typed record per JSON artifact.

The lowest layer: the engine writes these records, and the report, trends,
compare, evaluate, export, the notebook and the tests read them back with the
same code, so no reader guesses at a key its producer might have written.

Each record is a dataclass with `to_dict()`, `write(folder)` and a
`read(folder)` class method. A file with a key the record does not know, or
without one it requires, is an `ArtifactError` that names the file and the
key; optional keys an older Sustain did not write read as their defaults.
The training state inside `last.pth` is a record of training's own
(`training.resume`), as it holds tensors. `read_meta` is the one reader of a
`best_model.json`; `export_paths` finds it beside its weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .errors import SustainError, UsageError
from .utils import atomic_write_json, finite_or_none

# ---- the ingest's files (the output folder of `sustain data ingest` or of a run)
MANIFEST = "manifest.csv"
DATA_SUMMARY = "data_summary.json"
CORRUPT_FILES = "corrupt_files.txt"

# ---- a training run's files
HISTORY = "metrics_history.json"
RUN = "run.json"
LAST = "last.pth"
BEST_GLOB = "best_model_epoch*_acc*.pth"
EXPORT_WEIGHTS = "best_model.safetensors"
EXPORT_META = "best_model.json"

# ---- the final evaluation and the report (val; test files are prefixed "test_")
VAL_REPORT = "classification_report.json"
VAL_CONFUSION = "confusion_matrix.npy"
TEST_REPORT = "test_classification_report.json"
TEST_CONFUSION = "test_confusion_matrix.npy"
OOD_REPORT = "ood_classification_report.json"
OOD_CONFUSION = "ood_confusion_matrix.npy"
PREDICTIONS = "predictions_{split}.npz"
SUSPECTS_CSV = "suspect_labels.csv"
LABEL_ISSUES_CSV = "label_issues.csv"
REPORT_HTML = "report.html"
CURVES_PNG = "training_curves.png"
CONFUSION_PNG = "confusion_matrix.png"
F1_PNG = "per_class_f1.png"

# ---- `sustain export`
EXPORT_REPORT = "export_report.json"

# ---- `sustain crossval`: OUTPUT/crossval/<scheme>/ (docs/evaluation.md, "Cross-validation")
CROSSVAL_DIR = "crossval"
CROSSVAL = "crossval.json"
FOLDS_CSV = "folds.csv"
FOLD_ASSIGNMENT = "split_assignment.csv"  # in each fold's run folder: what data.split.assignment names


def best_checkpoint_name(epoch: int, val_acc: float) -> str:
    """`best_model_epoch{E}_acc{A:.2f}.pth` with A the val accuracy in percent."""
    return f"best_model_epoch{epoch}_acc{100.0 * val_acc:.2f}.pth"



def export_paths(path: Path) -> tuple[Path, Path]:
    """(weights, meta) for a run folder, a best_model.safetensors or a best_model.json."""
    if path.is_dir():
        return path / EXPORT_WEIGHTS, path / EXPORT_META
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"Cannot read checkpoint metadata {path}: {exc}",
                         "re-export the model, or pass the .pth checkpoint") from None
    return meta


def checkpoint_record(weights: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    return {"path": str(weights), "epoch": meta.get("epoch"), "val_acc": meta.get("val_acc"),
            "manifest_hash": meta.get("manifest_hash")}



def prepare_output_dir(path: str | Path) -> Path:
    """Create the output folder and prove it is writable, before anything slow happens."""
    out = Path(path).expanduser()
    hint = "choose another folder with --output DIR (or output_dir in the config), or fix its permissions"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test_{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"Output folder {out} is not writable: {exc.strerror or exc}", hint) from None
    return out.resolve()


class ArtifactError(SustainError):
    """An artifact file that cannot be read as its record."""


R = TypeVar("R", bound="Record")


class Record:
    """Shared writer and reader of the JSON records below."""

    FILE: ClassVar[str]
    LEGACY: ClassVar[frozenset[str]] = frozenset()  # keys older versions wrote; read and dropped

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def write(self, folder: str | Path) -> Path:
        return atomic_write_json(Path(folder) / self.FILE, self.to_dict())

    @classmethod
    def from_dict(cls: type[R], data: Any, *, source: str = "") -> R:
        where = source or cls.FILE
        if not isinstance(data, Mapping):
            raise ArtifactError(f"{where} does not hold a JSON object", "rebuild it with the command that wrote it")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        data = {k: v for k, v in data.items() if k not in cls.LEGACY}
        unknown = sorted(set(data) - set(fields))
        required = [n for n, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if unknown or missing:
            parts = ([f"unknown key(s) {', '.join(unknown)}"] if unknown else []) + \
                    ([f"missing key(s) {', '.join(missing)}"] if missing else [])
            raise ArtifactError(f"{where}: {'; '.join(parts)}",
                                "it was written by another version of Sustain or edited by hand: rebuild it")
        return cls(**{k: data[k] for k in data})

    @classmethod
    def read(cls: type[R], folder: str | Path) -> R:
        path = Path(folder) / cls.FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArtifactError(f"{path} not found", "is this a Sustain run folder?") from None
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path} cannot be read: {exc}", "rebuild it with the command that wrote it") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def read_if_present(cls: type[R], folder: str | Path) -> R | None:
        return cls.read(folder) if (Path(folder) / cls.FILE).is_file() else None


# =========================================================================== metrics_history.json

HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "val_set_acc",
                "val_samples", "lr", "skipped", "health", "epoch_seconds", "images_per_second", "per_class_f1")
TIMING_KEYS = ("epoch_seconds", "images_per_second")  # the only history entries that differ between reruns


@dataclass
class History(Record):
    """One list per column, one entry per finished epoch. Fractions 0-1 (`train_acc`, `val_acc`,
    `val_macro_f1`, `skipped`); non-finite numbers are null."""

    FILE: ClassVar[str] = HISTORY

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float | None] = field(default_factory=list)
    train_acc: list[float | None] = field(default_factory=list)
    val_loss: list[float | None] = field(default_factory=list)
    val_acc: list[float | None] = field(default_factory=list)
    val_macro_f1: list[float | None] = field(default_factory=list)
    val_set_acc: list[float | None] = field(default_factory=list)
    val_samples: list[int] = field(default_factory=list)
    lr: list[float | None] = field(default_factory=list)
    skipped: list[float | None] = field(default_factory=list)
    health: list[str] = field(default_factory=list)
    epoch_seconds: list[float | None] = field(default_factory=list)
    images_per_second: list[float | None] = field(default_factory=list)
    per_class_f1: list[list[float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.epoch)

    def append(self, entry: Mapping[str, Any]) -> None:
        """Add one epoch; `entry` must hold every column."""
        missing = [k for k in HISTORY_KEYS if k not in entry]
        if missing:
            raise KeyError(f"history entry without {', '.join(missing)}")
        for key in HISTORY_KEYS:
            getattr(self, key).append(finite_or_none(entry[key]))

    def without_timings(self) -> dict[str, Any]:
        """Everything that must be identical between two runs of the same config and seed."""
        return {k: v for k, v in self.to_dict().items() if k not in TIMING_KEYS}


# =========================================================================== best_model.json


@dataclass
class ModelMeta(Record):
    """What travels with the weights (`best_model.json`, the export, the ONNX metadata): the classes
    and everything the eval transform uses, so a Predictor crops and scales as the final evaluation."""

    FILE: ClassVar[str] = EXPORT_META

    model_name: str
    num_classes: int
    classes: list[str]
    input_size: list[int]
    mean: list[float]
    std: list[float]
    interpolation: str
    crop_pct: float
    bins: dict[str, Any] = field(default_factory=dict)
    sets: dict[str, Any] = field(default_factory=dict)
    crop_mode: str = "center"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    manifest_hash: str | None = None
    epoch: int | None = None  # the epoch-specific three: absent before the first best checkpoint
    val_acc: float | None = None
    val_macro_f1: float | None = None
    # Set at the end of training (docs/evaluation.md, "Calibration"): probabilities are softmax(logits / T);
    # with a target, a prediction is accepted when its `accept_on` ("bin"/"class") probability ≥ the threshold
    # (None: no threshold backs the target, so every prediction goes to review).
    temperature: float = 1.0
    accept_accuracy: float | None = None
    accept_on: str | None = None
    accept_threshold: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict)  # how T and the threshold were chosen

    def data_config(self) -> dict[str, Any]:
        """The timm data config the eval transform is built from."""
        return {"input_size": tuple(self.input_size), "mean": tuple(self.mean), "std": tuple(self.std),
                "interpolation": self.interpolation, "crop_pct": self.crop_pct, "crop_mode": self.crop_mode}


# =========================================================================== data_summary.json


@dataclass(kw_only=True)  # keyword-only, so the fields can keep the file's order
class DataSummary(Record):
    """What an ingest found, kept, merged and dropped (docs/data.md, "The data summary").

    `data.summary.build_summary` makes it, `write` writes it, and every reader (the report,
    the model card, the tests) reads it back with `read`."""

    FILE: ClassVar[str] = DATA_SUMMARY

    total_images: int
    manifest_hash: str
    seed: int
    split_fractions: dict[str, float]
    splits: dict[str, int]  # split -> images
    sources: dict[str, dict[str, Any]]  # source -> its counts and losses
    disabled_sources: list[Any] = field(default_factory=list)
    classes: dict[str, dict[str, Any]]  # class -> {split: images, "total": images} (single-label images)
    set_labels: dict[str, Any] = field(default_factory=dict)  # the same, per set label
    empty_classes: list[str] = field(default_factory=list)
    small_labels: list[Any] = field(default_factory=list)
    imbalance_ratio: float | None = None
    imbalance: dict[str, Any] | None = None
    unmapped: dict[str, Any] = field(default_factory=dict)
    dropped: dict[str, Any] = field(default_factory=dict)
    corrupt: dict[str, Any] = field(default_factory=dict)
    duplicates: dict[str, Any] = field(default_factory=dict)
    other_files: int = 0
    excluded: int = 0
    decode: dict[str, Any] = field(default_factory=dict)
    image_cache: dict[str, Any] | None = None  # size on disk and per image, when the cache is on
    holdout: dict[str, Any] = field(default_factory=dict)  # data.split.holdout_sources: ood images, removals

    def file_dict(self) -> dict[str, Any]:
        """The file's content: `image_cache` appears once a training run has recorded it, `holdout`
        when a source is held out."""
        out = self.to_dict()
        if out["image_cache"] is None:
            del out["image_cache"]
        if not out["holdout"]:
            del out["holdout"]
        return out

    def write(self, folder: str | Path) -> Path:
        return atomic_write_json(Path(folder) / self.FILE, self.file_dict())


# =========================================================================== run.json

@dataclass
class RunRecord(Record):
    """What a run did (`run.json`): written at the end, and when a signal stops it."""

    FILE: ClassVar[str] = RUN
    LEGACY: ClassVar[frozenset[str]] = frozenset({"trend_warnings", "success_checklist"})  # now health.trend_warnings, checklist

    status: str  # "completed", "failed" or "interrupted" (an early stop completes; stop_reason says so)
    stop_reason: str | None
    config: dict[str, Any]
    model_name: str
    classes: list[str]
    taxonomy: dict[str, Any]
    normalisation: dict[str, Any]
    device: dict[str, Any]
    seed: int
    timings: dict[str, float]
    versions: dict[str, str]
    manifest_hash: str
    data_summary: dict[str, Any]
    epochs_completed: int
    best: dict[str, Any]
    final_evaluation: dict[str, Any] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)  # totals, escalations, per_epoch, trend_warnings
    interruptions: list[dict[str, Any]] = field(default_factory=list)
    checklist: list[dict[str, Any]] = field(default_factory=list)
    report_error: str | None = None
    tracking: dict[str, Any] | None = None
    # Absolute paths on the machine that trained (run_dir, data_root, sources), to resume there; the only
    # place a run keeps them: the report, the compare page and suspect_labels.csv name files relative to these.
    local_paths: dict[str, Any] | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)  # one per start (a resume adds one)
    calibration: dict[str, Any] | None = None  # T, how it was chosen, the thresholds; ECE before/after per split



# =========================================================================== crossval.json

@dataclass
class CrossvalRecord(Record):
    """One cross-validation scheme's results (`crossval.json`); fractions 0-1."""

    FILE: ClassVar[str] = CROSSVAL

    scheme: str  # "kfold" | "source"
    folds: list[dict[str, Any]]  # name, held_out, n_train, n_val, n_test, accuracy, macro_f1, ... run_dir
    summary: dict[str, Any]  # accuracy / macro_f1: mean, std, ci95 (t interval over folds), n_folds
    oof: dict[str, Any] = field(default_factory=dict)  # the pooled out-of-fold score: n, accuracy, ci95
    sources: list[dict[str, Any]] = field(default_factory=list)  # source: out-of-source vs in-domain, shift gap
    skipped_sources: dict[str, Any] = field(default_factory=dict)  # source -> {fine_images, reason}
    label_issues: dict[str, Any] = field(default_factory=dict)  # how many, by which rule, on how many images
    settings: dict[str, Any] = field(default_factory=dict)  # folds, seed, val fraction, min images, epochs

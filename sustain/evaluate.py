"""Running a model over a loader, the final evaluation writers, and `sustain evaluate`.

- `collect_predictions` is the one place a model is run over a DataLoader of
  `sustain.data.dataset.Batch` objects; validation during training and every
  final evaluation use it, so they cannot disagree.
- `write_final_evaluation` scores the given weights (the caller's model, or
  the exported best weights when `checkpoint=` is given) on each split and
  writes ``confusion_matrix.npy`` + ``classification_report.json`` for val
  and ``<split>_confusion_matrix.npy`` + ``<split>_classification_report.json``
  for the others (``test_*``).
- `evaluate_checkpoint` is `sustain evaluate`: a run's val/test split rebuilt
  from its ``manifest.csv``, or a labelled folder (``--data``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import ValidationError
from sklearn.metrics import classification_report
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .artifacts import MANIFEST, VAL_CONFUSION, VAL_REPORT
from .checkpoints import (
    checkpoint_record,
    export_paths,
    load_checkpoint_model,
    load_weights,
    read_meta,
)
from .config import SourceConfig
from .data.dataset import ManifestDataset, collate_skip_failed
from .data.labels import compile_label_map
from .data.manifest import ManifestRow, read_manifest
from .data.walk import IMAGE_EXTENSIONS, walk_labelled
from .device import resolve_device
from .errors import ConfigError, UsageError
from .gallery import SamplePredictions, predictions_file, save_predictions
from .metrics import final_metrics, format_per_class
from .taxonomy import Taxonomy
from .transforms import build_eval_transform
from .utils import atomic_write, atomic_write_json, fmt_metric

log = logging.getLogger("sustain.evaluate")

# --------------------------------------------------------------------------- running a model


@dataclass
class Predictions:
    """A model's outputs over a whole loader, on the CPU, in loader order."""

    logits: torch.Tensor  # float32 [N, C]
    targets: torch.Tensor  # float32 [N, C] multi-hot
    source_ids: torch.Tensor  # int64 [N]
    failed: int  # samples the loader dropped because they could not be read
    indices: torch.Tensor | None = None  # int64 [N]: dataset index of each row, from an `indexed_loader`

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(dim=1)


def _autocast_context(autocast: Any) -> contextlib.AbstractContextManager:
    """`autocast` may be None/False (no autocast), a factory returning a context
    manager (e.g. ``functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)``),
    or a re-enterable context manager such as a ``torch.autocast`` object."""
    if not autocast:
        return contextlib.nullcontext()
    if hasattr(autocast, "__enter__"):
        return autocast
    if callable(autocast):
        return autocast()
    raise TypeError(f"autocast must be None, a context manager or a factory of one, got {autocast!r}")


def collect_predictions(
    model: torch.nn.Module,
    loader: Iterable[Any],
    device: torch.device | str,
    autocast: Any = None,
    *,
    desc: str = "Validation",
    progress: bool = True,
) -> Predictions:
    """Run `model` in eval mode over every batch of `loader` and gather its logits.

    Batches are `sustain.data.dataset.Batch` objects (``images``, ``targets``,
    ``source_ids``, ``failed``). The model is left in eval mode; callers that
    train next call ``model.train()`` themselves.
    """
    device = torch.device(device)
    model.eval()
    logits, targets, source_ids, indices, failed = [], [], [], [], 0
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
            if isinstance(batch, tuple):  # (Batch, dataset indices) from an indexed_loader
                batch, index = batch
                indices.append(index)
            failed += int(batch.failed)
            if batch.images is None or len(batch.images) == 0:
                continue
            images = batch.images.to(device, non_blocking=True)
            with _autocast_context(autocast):
                out = model(images)
            logits.append(out.float().cpu())
            targets.append(batch.targets.float().cpu())
            source_ids.append(batch.source_ids.long().cpu())
    num_classes = _num_outputs(model)
    return Predictions(
        logits=torch.cat(logits) if logits else torch.zeros(0, num_classes),
        targets=torch.cat(targets) if targets else torch.zeros(0, num_classes),
        source_ids=torch.cat(source_ids) if source_ids else torch.zeros(0, dtype=torch.long),
        failed=failed,
        indices=torch.cat(indices) if indices else None,
    )


class _Indexed(Dataset):
    """A dataset whose items also carry their index (module level: DataLoader workers pickle it)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


class _IndexedCollate:
    """The loader's collate over the items, plus the indices of those that loaded."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, items: Sequence[tuple[int, Any]]) -> tuple[Any, torch.Tensor]:
        loaded = torch.tensor([i for i, item in items if item is not None], dtype=torch.int64)
        return self.collate([item for _, item in items]), loaded


def indexed_loader(loader: Any) -> Any:
    """The same DataLoader whose batches also say which dataset rows they hold, so each
    prediction keeps its file path even when unreadable images were dropped.
    Anything but a DataLoader over a dataset with ``paths`` is returned as is."""
    if not isinstance(loader, DataLoader) or not hasattr(loader.dataset, "paths"):
        return loader
    workers = loader.num_workers
    return DataLoader(_Indexed(loader.dataset), batch_size=loader.batch_size, shuffle=False, num_workers=workers,
                      collate_fn=_IndexedCollate(loader.collate_fn), pin_memory=loader.pin_memory,
                      prefetch_factor=loader.prefetch_factor if workers else None)


def _num_outputs(model: torch.nn.Module) -> int:
    num = getattr(model, "num_classes", None)
    if isinstance(num, int):
        return num
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return last[-1].out_features if last else 0


# --------------------------------------------------------------------------- reports


def build_classification_report(
    preds: Predictions, taxonomy: Taxonomy, sources: Sequence[str] | None, split: str
) -> tuple[dict[str, Any], np.ndarray]:
    """The JSON report of one split and its C×C confusion matrix.

    The top level is scikit-learn's ``classification_report(output_dict=True)``
    over all C classes in taxonomy order (zero_division=0), so
    ``report["<class>"]["f1-score"]`` works as usual. Our additions sit beside
    it under their own keys (see docs/evaluation.md).
    """
    probs = preds.probs.numpy()
    targets = preds.targets.numpy()
    m = final_metrics(probs, targets, taxonomy, preds.source_ids.numpy(), sources)
    report = _sklearn_report(probs, targets, taxonomy)
    overlap = set(report) & _EXTRA_KEYS
    if overlap:
        raise UsageError(f"class names {sorted(overlap)} collide with report keys", "rename those classes")
    report.update(
        {
            "split": split,
            "classes": list(taxonomy.classes),
            "n_samples": int(len(probs)),
            "n_fine": m["n_fine"],
            "n_set": m["n_set"],
            "failed": int(preds.failed),
            "macro_f1": m["macro_f1"],
            "set_accuracy": m["set_acc"],
            "top5_accuracy": m["top5_acc"],
            "expected_calibration_error": m["ece"],
            "bin_accuracy": m["bin"],
            "per_source_accuracy": m["per_source"],
            "worst_classes": [{"class": c, "f1": f, "support": s} for c, f, s in m["worst"]],
        }
    )
    return report, m["confusion"]


_EXTRA_KEYS = frozenset(
    {
        "split", "classes", "n_samples", "n_fine", "n_set", "failed", "macro_f1", "set_accuracy",
        "top5_accuracy", "expected_calibration_error", "bin_accuracy", "per_source_accuracy",
        "worst_classes", "checkpoint",
    }
)


def _sklearn_report(probs: np.ndarray, targets: np.ndarray, taxonomy: Taxonomy) -> dict[str, Any]:
    fine = (targets > 0.5).sum(axis=1) == 1
    names = list(taxonomy.classes)
    if not fine.any():  # scikit-learn refuses empty input; same shape, all zero
        zero = {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0.0}
        return {**{c: dict(zero) for c in names}, "accuracy": 0.0,
                "macro avg": dict(zero), "weighted avg": dict(zero)}
    return classification_report(
        targets[fine].argmax(axis=1),
        probs[fine].argmax(axis=1),
        labels=list(range(taxonomy.num_classes)),
        target_names=names,
        output_dict=True,
        zero_division=0,
    )


def report_paths(out_dir: Path, split: str, stem: str | None = None) -> tuple[Path, Path]:
    """(confusion .npy, report .json) of a split. By default val has no prefix and
    other splits are prefixed with their name (SPEC §7); `stem` replaces the prefix."""
    if stem is None:
        stem = "" if split == "val" else f"{split}_"
    return out_dir / f"{stem}{VAL_CONFUSION}", out_dir / f"{stem}{VAL_REPORT}"


def write_split_report(
    preds: Predictions,
    taxonomy: Taxonomy,
    sources: Sequence[str] | None,
    out_dir: str | Path,
    split: str,
    *,
    stem: str | None = None,
    checkpoint: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one split's confusion matrix and report atomically; return the report."""
    report, confusion = build_classification_report(preds, taxonomy, sources, split)
    if checkpoint is not None:
        report["checkpoint"] = dict(checkpoint)
    cm_path, json_path = report_paths(Path(out_dir), split, stem)
    atomic_write(cm_path, lambda fh: np.save(fh, confusion))
    atomic_write_json(json_path, report)
    return report


def write_final_evaluation(
    model: torch.nn.Module,
    loaders: Mapping[str, Iterable[Any] | None],
    taxonomy: Taxonomy,
    sources: Sequence[str] | None,
    out_dir: str | Path,
    device: torch.device | str,
    autocast: Any = None,
    *,
    checkpoint: str | Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Score the best weights on each split and write the SPEC §7 reports.

    With ``checkpoint`` (a ``best_model.safetensors`` path, or the run folder
    holding it) those weights are loaded into `model` first, and the report
    records their epoch; the engine passes it so the final numbers can never
    come from the last epoch's live weights. Returns ``{split: report}``; a
    split whose loader is None is skipped.
    """
    record = None
    if checkpoint is not None:
        weights, meta = export_paths(Path(checkpoint))
        load_weights(model, weights)
        record = checkpoint_record(weights, read_meta(meta) if meta.is_file() else {})
    device = torch.device(device)
    model.to(device)
    results: dict[str, dict[str, Any]] = {}
    for split, loader in loaders.items():
        if loader is None:
            continue
        preds = collect_predictions(model, indexed_loader(loader), device, autocast,
                                    desc=f"Final evaluation ({split})")
        results[split] = write_split_report(preds, taxonomy, sources, out_dir, split, checkpoint=record)
        write_prediction_store(preds, getattr(loader, "dataset", None), taxonomy, sources,
                               Path(out_dir) / predictions_file(split), split)
        log.info("%s", summary_line(results[split]))
    return results


def write_prediction_store(preds: Predictions, dataset: Any, taxonomy: Taxonomy, sources: Sequence[str] | None,
                           path: Path, split: str, *, in_sample: bool = False) -> Path | None:
    """``predictions_<split>.npz`` (see `sustain.gallery`): each scored image's path, source, given
    label, probabilities and targets, for `sustain report`'s gallery. Needs the dataset's
    ``paths`` and predictions from an `indexed_loader`; otherwise nothing is written."""
    if preds.indices is None or not hasattr(dataset, "paths"):
        log.debug("no per-sample store for %s: the loader does not say which file each row is", split)
        return None
    targets = preds.targets.numpy() > 0.5
    names: dict[tuple[int, ...], str] = {}
    labels = [names.setdefault(key, taxonomy.label_name(key))
              for key in map(tuple, (np.flatnonzero(t).tolist() for t in targets))]
    source_names = [sources[i] if sources else "" for i in preds.source_ids.tolist()]
    store = SamplePredictions(split=split, classes=tuple(taxonomy.classes),
                              paths=np.array([dataset.paths[i] for i in preds.indices.tolist()], dtype=str),
                              sources=np.array(source_names, dtype=str), labels=np.array(labels, dtype=str),
                              probs=preds.probs.numpy(), targets=targets, in_sample=in_sample)
    return save_predictions(path, store)


def summary_line(report: Mapping[str, Any]) -> str:
    """One readable line per split, e.g. for the end of training and `sustain evaluate`."""
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f}%"

    return (
        f"📊 {report['split']}: Acc {pct(report['accuracy'])} ({report['n_fine']} fine-labelled images), "
        f"Macro F1 {report['macro_f1']:.4f}, Top-5 {pct(report['top5_accuracy'])}, "
        f"Bin {pct(report['bin_accuracy']['acc'])}, Set {pct(report['set_accuracy'])} "
        f"({report['n_set']} set-labelled), ECE {fmt_metric(report['expected_calibration_error'])}"
    )


# --------------------------------------------------------------------------- sustain evaluate


def evaluate_checkpoint(
    checkpoint: str | Path,
    split: str = "val",
    data_dir: str | Path | None = None,
    label_map: str | Path | None = None,
    *,
    batch_size: int = 32,
    device: str = "auto",
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """`sustain evaluate`: score a checkpoint and write ``eval_*`` reports beside it.

    Without ``data_dir`` the run's own ``split`` is rebuilt from the
    ``manifest.csv`` next to the checkpoint. With ``data_dir`` every image
    under ``<data_dir>/<folder>/`` is scored, the folder naming its class or
    set (or mapped by the YAML ``label_map``). Reports go to ``out_dir``
    (default: the checkpoint's folder) as ``eval_<split>_confusion_matrix.npy``
    and ``eval_<split>_classification_report.json`` (``eval_data_<name>_…`` for
    a folder), so the training run's own reports are never overwritten.
    """
    dev = resolve_device(device)
    loaded = load_checkpoint_model(checkpoint, dev)
    run_dir = loaded.path if loaded.path.is_dir() else loaded.path.parent
    taxonomy = loaded.taxonomy
    if data_dir is None:
        rows, sources = read_manifest_split(run_dir / MANIFEST, split, taxonomy)
        name = split
    else:
        rows, sources = labelled_folder_rows(Path(data_dir), taxonomy, label_map)
        name = f"data_{Path(data_dir).resolve().name}"
    dataset = ManifestDataset(rows, taxonomy.num_classes, sources, build_eval_transform(dict(loaded.data_config)))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_skip_failed)
    preds = collect_predictions(loaded.model, indexed_loader(loader), dev)
    record = checkpoint_record(loaded.path, loaded.meta)
    out = Path(out_dir or run_dir)
    report = write_split_report(preds, taxonomy, sources, out, name, stem=f"eval_{name}_", checkpoint=record)
    # The train split's store is in-sample: the model learned those labels (the report says so).
    write_prediction_store(preds, dataset, taxonomy, sources, out / predictions_file(f"eval_{name}"), name,
                           in_sample=name == "train")
    for line in format_per_class(_per_class_view(report), taxonomy):
        log.info("%s", line)
    log.info("%s", summary_line(report))
    if preds.failed:
        log.warning("⚠️  %d image(s) could not be read and were not scored", preds.failed)
    return report


def _per_class_view(report: Mapping[str, Any]) -> dict[str, Any]:
    return {"macro_f1": report["macro_f1"],
            "worst": [(w["class"], w["f1"], w["support"]) for w in report["worst_classes"]]}


def read_manifest_split(manifest: Path, split: str, taxonomy: Taxonomy) -> tuple[list[Any], list[str]]:
    """ManifestRows of one split of a run's manifest.csv (labels resolved with the
    checkpoint's taxonomy, as training did) and their source names."""
    if not manifest.is_file():
        raise UsageError(f"No manifest.csv next to the checkpoint: {manifest}",
                         "pass the checkpoint inside its run folder, or score a folder with --data DIR")
    rows = [r for r in read_manifest(manifest, taxonomy) if r.split == split]
    if not rows:
        raise UsageError(f"{manifest} has no '{split}' rows", "pick another --split")
    return rows, list(dict.fromkeys(r.source for r in rows))


def labelled_folder_rows(
    root: Path, taxonomy: Taxonomy, label_map: str | Path | None = None
) -> tuple[list[Any], list[str]]:
    """ManifestRows for ``root/<folder>/**/<image>``, walked and labelled as ingestion does
    (`data.walk.walk_labelled`); a folder is a class or set name, or is mapped by a YAML
    ``{folder: class | [classes] | SET | null}``."""
    if not root.is_dir():
        raise UsageError(f"--data folder not found: {root}", "pass a folder of <class>/<image> files")
    source = f"data_{root.resolve().name}"
    walked = walk_labelled(root, _folder_label_map(source, taxonomy, label_map))
    if walked.unmapped:
        folders = sorted(walked.unmapped)
        problem = (f"Folders in {root} are not in --label-map {label_map}: {folders}" if label_map is not None else
                   f"Folders in {root} name no class or set of the checkpoint: {folders}")
        raise UsageError(problem, "use the checkpoint's class or set names, or pass --label-map map.yaml "
                                  "with {folder: class | [classes] | SET | null} (null skips a folder)")
    rows = [ManifestRow(path=entry.path, source=source, label=taxonomy.label_name(targets), targets=targets,
                        split="eval", content_hash="", group=i, relpath=entry.rel)
            for i, (entry, targets) in enumerate(walked.labelled)]
    if not rows:
        raise UsageError(f"No images found under {root}/<class>/", f"image extensions: {sorted(IMAGE_EXTENSIONS)}")
    return rows, [source]


def _folder_label_map(source: str, taxonomy: Taxonomy, label_map: str | Path | None) -> Any:
    """The LabelMap for `--data`: the --label-map YAML, or every class and set name as itself."""
    if label_map is None:
        mapping: Any = {name: name for name in (*taxonomy.classes, *taxonomy.sets)}
    else:
        try:
            mapping = yaml.safe_load(Path(label_map).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"Cannot read --label-map {label_map}: {exc}", "give a YAML {folder: class} mapping") from None
        if not isinstance(mapping, dict):
            raise UsageError(f"--label-map {label_map} must be a mapping {{folder: class}}")
    try:
        return compile_label_map(SourceConfig(name=source, root=".", label_map={str(k): v for k, v in mapping.items()}),
                                 taxonomy)
    except ValidationError as exc:
        raise UsageError(f"--label-map {label_map}: {exc.errors()[0]['msg']}",
                         "each folder maps to a class, a set, a list of classes, or null") from None
    except ConfigError as exc:
        problem = exc.message.split(": ", 1)[-1]
        raise UsageError(f"--label-map {label_map} maps folders to names that are no class or set of the checkpoint: "
                         f"{problem}", exc.hint) from None

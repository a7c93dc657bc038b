"""`sustain evaluate`: score a checkpoint on its run's split or a labelled folder and
write ``eval_*`` reports beside it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from ..artifacts import MANIFEST, checkpoint_record
from ..data import ManifestDataset, collate_skip_failed
from ..device import resolve_device
from ..evaluate import (
    calibration_from_meta,
    collect_predictions,
    format_per_class,
    indexed_loader,
    labelled_folder_rows,
    predictions_file,
    read_manifest_split,
    summary_line,
    write_prediction_store,
    write_split_report,
)
from ..transforms import build_eval_transform
from .loading import load_checkpoint_model

log = logging.getLogger("sustain.evaluate")


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
    calibration = calibration_from_meta(loaded.meta)  # the run's T and accept threshold, as predict applies them
    preds.temperature = calibration["temperature"]
    record = checkpoint_record(loaded.path, loaded.meta)
    out = Path(out_dir or run_dir)
    report = write_split_report(preds, taxonomy, sources, out, name, stem=f"eval_{name}_", checkpoint=record,
                                calibration=calibration)
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

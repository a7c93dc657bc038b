"""Running a model over a loader, the final evaluation writers, and `sustain evaluate`.

- `collect_predictions` (`predictions`) is the one place a model is run over a
  DataLoader of `sustain.data.dataset.Batch` objects; validation during training
  and every final evaluation use it, so they cannot disagree.
- `write_final_evaluation` (`reports`) scores the given weights (the caller's
  model, or the exported best weights when `checkpoint=` is given) on each split
  and writes ``confusion_matrix.npy`` + ``classification_report.json`` for val
  and ``<split>_confusion_matrix.npy`` + ``<split>_classification_report.json``
  for the others (``test_*``).
- `evaluate_checkpoint` (`command`) is `sustain evaluate`: a run's val/test
  split rebuilt from its ``manifest.csv``, or a labelled folder (``--data``),
  whose rows `labelled` builds.

The package re-exports those names, so the engine, the CLI and export import
them from `sustain.evaluate` as before.
"""

from .labelled import labelled_folder_rows, read_manifest_split
from .predictions import Predictions, collect_predictions, indexed_loader
from .reports import (
    build_classification_report,
    report_paths,
    summary_line,
    write_final_evaluation,
    write_prediction_store,
    write_split_report,
)

__all__ = [
    "Predictions", "build_classification_report", "collect_predictions", "indexed_loader",
    "labelled_folder_rows", "read_manifest_split", "report_paths", "summary_line", "write_final_evaluation",
    "write_prediction_store", "write_split_report",
]

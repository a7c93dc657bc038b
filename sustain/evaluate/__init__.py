"""Scoring predictions: metrics (pure), trend warnings and the checklist, the per-image prediction store and
the error gallery's selections, running a model over a loader (`collect_predictions`), the final
evaluation's reports, the rows `sustain evaluate` scores, and comparing finished runs (pure). Reads the
base and data only, so training, the report and deployment can all use it.

Other rooms import only the names below (tests/test_architecture.py checks it); each is imported on
first use, so importing the package costs nothing.
"""

from __future__ import annotations

from ..utils import lazy_offers

# --- offers (generated from the imports of other rooms; keep sorted) ---
_OFFERS = {
    'PAIRS': 'gallery',
    'PER_PAIR': 'gallery',
    'Predictions': 'predictions',
    'SUSPECTS_CSV': 'gallery',
    'SUSPECTS_SHOWN': 'gallery',
    'SUSPECT_GIVEN_MAX': 'gallery',
    'SUSPECT_OTHER_MIN': 'gallery',
    'Sample': 'gallery',
    'SamplePredictions': 'gallery',
    'TOP_MISTAKES': 'gallery',
    'Thumbnails': 'gallery',
    'VERDICTS': 'compare',
    'build_classification_report': 'reports',
    'collect_predictions': 'predictions',
    'compare_runs': 'compare',
    'confused_pairs': 'gallery',
    'epoch_metrics': 'metrics',
    'exit_code': 'compare',
    'format_comparison': 'compare',
    'format_per_class': 'metrics',
    'indexed_loader': 'predictions',
    'labelled_folder_rows': 'labelled',
    'load_run': 'compare',
    'load_run_predictions': 'gallery',
    'per_source': 'gallery',
    'predictions_file': 'gallery',
    'read_manifest_split': 'labelled',
    'report_paths': 'reports',
    'summary_line': 'reports',
    'suspect_labels': 'gallery',
    'table_rows': 'compare',
    'top_confusions': 'metrics',
    'top_mistakes': 'gallery',
    'verdict_lines': 'compare',
    'trends': '',
    'write_final_evaluation': 'reports',
    'write_prediction_store': 'reports',
    'write_split_report': 'reports',
    'write_suspects_csv': 'gallery',
}
# --- end offers ---

__all__ = sorted(_OFFERS)
__getattr__ = lazy_offers(__name__, _OFFERS)

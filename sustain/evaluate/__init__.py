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
    'AcceptPolicy': 'selective',
    'DEFAULT_METHOD': 'label_issues',
    'FIXED_GIVEN_MAX': 'label_issues',
    'FIXED_OTHER_MIN': 'label_issues',
    'LABEL_ISSUES_COLUMNS': 'label_issues',
    'METHODS': 'label_issues',
    'PAIRS': 'gallery',
    'PER_PAIR': 'gallery',
    'Predictions': 'predictions',
    'SUSPECTS_CSV': 'gallery',
    'SUSPECTS_SHOWN': 'gallery',
    'Sample': 'gallery',
    'SamplePredictions': 'gallery',
    'TOP_MISTAKES': 'gallery',
    'Thumbnails': 'gallery',
    'VERDICTS': 'compare',
    'accept_report': 'selective',
    'apply_temperature': 'calibration',
    'build_classification_report': 'reports',
    'calibration_from_meta': 'calibration',
    'calibration_meta_fields': 'calibration',
    'collect_predictions': 'predictions',
    'compare_runs': 'compare',
    'confused_pairs': 'gallery',
    'crossval': '',
    'decision_level': 'selective',
    'epoch_metrics': 'metrics',
    'exit_code': 'compare',
    'expected_calibration_error': 'metrics',
    'find_label_issues': 'label_issues',
    'format_comparison': 'compare',
    'format_per_class': 'metrics',
    'indexed_loader': 'predictions',
    'label_issue_rows': 'gallery',
    'labelled_folder_rows': 'labelled',
    'load_predictions': 'gallery',
    'load_run': 'compare',
    'load_run_predictions': 'gallery',
    'per_source': 'gallery',
    'predictions_file': 'gallery',
    'read_manifest_split': 'labelled',
    'reliability': 'calibration',
    'report_paths': 'reports',
    'risk_coverage': 'selective',
    'sample': 'gallery',
    'scored': 'selective',
    'shift_rows': 'shift',
    'summary_line': 'reports',
    'suspect_labels': 'gallery',
    'suspect_masks': 'gallery',
    'table_rows': 'compare',
    'top_confusions': 'metrics',
    'top_mistakes': 'gallery',
    'trends': '',
    'uncalibrate': 'calibration',
    'verdict_lines': 'compare',
    'wilson_interval': 'shift',
    'write_final_evaluation': 'reports',
    'write_label_issues': 'label_issues',
    'write_prediction_store': 'reports',
    'write_split_report': 'reports',
    'write_suspects_csv': 'gallery',
}
# --- end offers ---

__all__ = sorted(_OFFERS)
__getattr__ = lazy_offers(__name__, _OFFERS)

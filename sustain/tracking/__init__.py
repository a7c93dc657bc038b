"""Experiment tracking: TensorBoard and MLflow behind one `Tracker`, attached to a training run by its hooks.

Other rooms import only the names below (tests/test_architecture.py checks it); each is imported on
first use, so importing the package costs nothing.
"""

from __future__ import annotations

from ..utils import lazy_offers

# --- offers (generated from the imports of other rooms; keep sorted) ---
_OFFERS = {
    'Tracker': 'tracker',
    'log_summary': 'crossval_parent',
    'parent_run': 'crossval_parent',
}
# --- end offers ---

__all__ = sorted(_OFFERS)
__getattr__ = lazy_offers(__name__, _OFFERS)

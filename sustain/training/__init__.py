"""A training run: `train(cfg)` (engine: setup, resume, the loop, the end), the loop's state and decisions,
the epoch in progress and one training step, the guards, hooks (the console and tracking subscribe) and
stop signals, checkpoints (best and `last.pth`), the optimizer and schedule, precision and autocast, the
sanity check, the measured CPU plan, the loaders and DDP.

Other rooms import only the names below (tests/test_architecture.py checks it); each is imported on
first use, so importing the package costs nothing.
"""

from __future__ import annotations

from ..utils import lazy_offers

# --- offers (generated from the imports of other rooms; keep sorted) ---
_OFFERS = {
    'CrossvalOptions': 'crossval',
    'run_crossval': 'crossval',
    'train': 'engine',
}
# --- end offers ---

__all__ = sorted(_OFFERS)
__getattr__ = lazy_offers(__name__, _OFFERS)

"""Using a trained model: loading it (`load_checkpoint_model`, the one reader of a run's best weights for use),
`Predictor` and `sustain predict`, `sustain evaluate` (scoring), `sustain export` (ONNX, int8, the
parity gate) and the timm model folder with its card, and `sustain serve` (the model behind an HTTP API
and a page).

Other rooms import only the names below (tests/test_architecture.py checks it); each is imported on
first use, so importing the package costs nothing.
"""

from __future__ import annotations

from ..utils import lazy_offers

# --- offers (generated from the imports of other rooms; keep sorted) ---
_OFFERS = {
    'Predictor': 'inference',
    'evaluate_checkpoint': 'scoring',
    'export_run': 'export',
    'predict_cli': 'inference',
    'serve_cli': 'serve',
}
# --- end offers ---

__all__ = sorted(_OFFERS)
__getattr__ = lazy_offers(__name__, _OFFERS)

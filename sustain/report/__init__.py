"""What a reader opens: `report.html` (`writer.build_report`, the page in `html`, the plots, the error
gallery's HTML) and the `sustain compare` page. Reads artifacts and evaluate; never trains.

Other rooms import only the names below (tests/test_architecture.py checks it); each is imported on
first use, so importing the package costs nothing.
"""

from __future__ import annotations

from ..utils import lazy_offers

# --- offers (generated from the imports of other rooms; keep sorted) ---
_OFFERS = {
    'build_crossval_page': 'crossval_page',
    'build_report': 'writer',
    'compare_cli': 'compare_page',
}
# --- end offers ---

__all__ = sorted(_OFFERS)
__getattr__ = lazy_offers(__name__, _OFFERS)

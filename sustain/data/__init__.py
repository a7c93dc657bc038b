"""The data lake: label resolution, the walk and decode of each source, near-duplicate groups and the split,
the manifest, the data summary, the ingest pass (`ingest`), the image cache, the torch Dataset, the demo
lake and `sustain data download`. Below everything but the base.

Other rooms import only the names below (tests/test_architecture.py checks it); each is imported on
first use, so importing the package costs nothing.
"""

from __future__ import annotations

from ..utils import lazy_offers

# --- offers (generated from the imports of other rooms; keep sorted) ---
_OFFERS = {
    'CorruptImage': 'scan',
    'Fold': 'folds',
    'FoldPlan': 'folds',
    'IMAGE_EXTENSIONS': 'walk',
    'ImageCache': 'image_cache',
    'Lake': 'lake',
    'MIN_SOURCE_IMAGES': 'folds',
    'ManifestDataset': 'dataset',
    'ManifestRow': 'manifest',
    'OVER_PIXEL_LIMIT': 'scan',
    'cache_root': 'image_cache',
    'check_sources': 'lake',
    'collate_skip_failed': 'dataset',
    'compile_label_map': 'labels',
    'count_images': 'walk',
    'download_sources': 'download',
    'folds_text': 'folds',
    'image_cache': '',
    'ingest': 'lake',
    'kfold_plan': 'folds',
    'load_rgb': 'scan',
    'make_demo_lake': 'demo',
    'normalize_key': 'labels',
    'read_manifest': 'manifest',
    'record_image_cache': 'lake',
    'source_plan': 'folds',
    'to_rgb': 'scan',
    'val_fraction': 'folds',
    'walk_labelled': 'walk',
    'walk_source': 'walk',
    'write_assignment': 'folds',
}
# --- end offers ---

__all__ = sorted(_OFFERS)
__getattr__ = lazy_offers(__name__, _OFFERS)

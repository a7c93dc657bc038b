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
    'IMAGE_EXTENSIONS': 'walk',
    'ImageCache': 'image_cache',
    'ManifestDataset': 'dataset',
    'ManifestRow': 'manifest',
    'OVER_PIXEL_LIMIT': 'scan',
    'check_sources': 'lake',
    'collate_skip_failed': 'dataset',
    'compile_label_map': 'labels',
    'count_images': 'walk',
    'download_sources': 'download',
    'image_cache': '',
    'ingest': 'lake',
    'load_rgb': 'scan',
    'make_demo_lake': 'demo',
    'normalize_key': 'labels',
    'read_manifest': 'manifest',
    'record_image_cache': 'lake',
    'to_rgb': 'scan',
    'walk_labelled': 'walk',
    'walk_source': 'walk',
}
# --- end offers ---

__all__ = sorted(_OFFERS)
__getattr__ = lazy_offers(__name__, _OFFERS)

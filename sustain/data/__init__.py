"""The data lake: label resolution, ingestion, splits, manifest, Dataset, demo lake, download."""

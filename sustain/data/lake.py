"""Ingestion: the one pass from configured sources to a manifest (SPEC §4, §7).

`ingest` walks the enabled sources in config order (files sorted), resolves
labels, decodes every labelled image once (cached), merges exact duplicates
across sources (`collect`), groups near duplicates, splits by group (`split`),
and writes `manifest.csv` (`manifest`), `data_summary.json` (`summary`) and
`corrupt_files.txt`.

Nothing here is silent: every file that does not reach the manifest is
counted under one reason (unmapped, dropped by a null label, corrupt,
excluded, merged as a duplicate, dropped for a label conflict), and the
printed summary says how many and where.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import CORRUPT_FILES, MANIFEST, DataSummary
from ..config import Config
from ..taxonomy import Taxonomy
from ..utils import atomic_write_text
from .collect import (
    check_sources,
    decode_sources,
    ingest_workers,
    merge_exact_duplicates,
    pack_signatures,
    scan_source,
)
from .decode_cache import DecodeCache
from .folds import assigned_splits
from .image_cache import ImageCache, cache_root, disk_summary
from .image_cache import describe as describe_image_cache
from .manifest import ManifestRow, manifest_hash, manifest_text
from .scan import SIGNATURE_VERSION
from .split import (
    ALL_SPLITS,
    COLOUR_TOLERANCE,
    MIN_CORRELATION,
    OOD,
    SPLITS,
    VERIFY_DISTANCE,
    assign_splits,
    hold_out,
    near_duplicate_groups,
)
from .summary import IngestFacts, build_summary, check_lake, format_summary, summary_warnings

log = logging.getLogger("sustain.data.lake")

__all__ = ["Lake", "check_sources", "ingest", "record_image_cache", "write_lake_files"]


@dataclass
class Lake:
    rows: list[ManifestRow]
    data_summary: DataSummary
    manifest_hash: str
    sources: list[str]  # enabled source names; index = source id

    @property
    def summary(self) -> dict[str, Any]:
        """The data summary as data_summary.json holds it (the form run.json and tracking keep)."""
        return self.data_summary.file_dict()

    def split(self, name: str) -> list[ManifestRow]:
        if name not in ALL_SPLITS:
            raise ValueError(f"unknown split {name!r}; use one of {ALL_SPLITS}")
        return [r for r in self.rows if r.split == name]


def ingest(cfg: Config, taxonomy: Taxonomy, out_dir: str | Path | None = None, *,
           log_summary: bool = True, image_cache: ImageCache | None = None) -> Lake:
    """Build the lake described by `cfg.data`; write its files into `out_dir` when given.
    With `image_cache`, the files decoded now also fill their training-resolution copies.

    Raises UsageError/ConfigError (exit 2) for a missing source root, a
    label_map target outside the taxonomy, an empty lake, and, with
    `data.strict`, unmapped files or a class without images.
    """
    with _gc_paused():
        return _ingest(cfg, taxonomy, out_dir, log_summary, image_cache)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # The pass allocates a few objects per file (and makes no reference cycles);
    # the cyclic collector re-scanning them all costs a third of a warm ingest.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _ingest(cfg: Config, taxonomy: Taxonomy, out_dir: str | Path | None, log_summary: bool,
            image_cache: ImageCache | None) -> Lake:
    say = log.info if log_summary else log.debug
    data = cfg.data

    enabled, label_maps, roots = check_sources(cfg, taxonomy)
    for source in data.sources:
        if not source.enabled:
            say("⏭️  Skipping %s (enabled: false)", source.name)

    cache_dir = cache_root(data)
    scans = []
    for source, root, label_map in zip(enabled, roots, label_maps, strict=True):
        say("📂 Ingesting %s from %s...", source.name, cfg.source_root(source))
        scans.append(scan_source(source, root, label_map, skip=[cache_dir]))

    cache = DecodeCache(cache_dir)
    try:
        decoded = decode_sources(scans, cache, data.max_image_pixels, ingest_workers(data.ingest_workers),
                                 progress=log_summary, fill=image_cache.fill if image_cache is not None else None)
        merged = merge_exact_duplicates(decoded.images)
        groups = _near_duplicate_groups(cache, pack_signatures(merged.kept), data.near_duplicate_distance)
    finally:
        cache.close()
    names = [s.name for s in enabled]
    rows, small_labels, removed = _split_rows(cfg, taxonomy, merged, groups, names)
    digest = manifest_hash(rows)
    summary = build_summary(IngestFacts(scans, decoded, merged, small_labels, rows, digest, removed), cfg, taxonomy)
    if log_summary:
        for line in format_summary(summary, taxonomy):
            log.info(line)
        for line in summary_warnings(summary):
            log.warning(line)
    check_lake(summary, strict=data.strict)

    lake = Lake(rows=rows, data_summary=summary, manifest_hash=digest, sources=names)
    if out_dir is not None:
        write_lake_files(out_dir, lake, decoded.corrupt)
        say("✓ Manifest written: %s (hash %s)", Path(out_dir) / MANIFEST, digest[:16])
    return lake


def _split_rows(cfg: Config, taxonomy: Taxonomy, merged: Any, groups: np.ndarray,
                names: list[str]) -> tuple[list[ManifestRow], list[dict], list[ManifestRow]]:
    """The manifest rows, split by group, and the labels too small to split. The held-out sources'
    images go to `ood`; another source's near duplicates of them are returned apart, removed.
    With `data.split.assignment` (a crossval fold) every image's split comes from that file instead."""
    kept = merged.kept
    names_of = {t: taxonomy.label_name(t) for t in {im.targets for im in kept}}
    labels = [names_of[im.targets] for im in kept]
    if cfg.data.split.assignment:  # decided before, by data.folds
        splits, small_labels = assigned_splits(cfg.data.split.assignment, [im.content_hash for im in kept]), []
        out = np.zeros(len(kept), dtype=bool)
    else:
        splits, small_labels, out = _drawn_splits(cfg, kept, labels, groups, names)
    rows = [
        ManifestRow(path=im.entry.path, source=names[im.source], label=label, targets=im.targets,
                    split=str(sp), content_hash=im.content_hash, group=int(g), relpath=im.entry.rel, duplicates=dup)
        for im, label, sp, g, dup in zip(kept, labels, splits, groups, merged.duplicates, strict=True)
    ]
    removed = [r for r, o in zip(rows, out, strict=True) if o]
    return [r for r, o in zip(rows, out, strict=True) if not o], small_labels, removed


def _drawn_splits(cfg: Config, kept: Any, labels: list[str], groups: np.ndarray,
                  names: list[str]) -> tuple[Any, list[dict], np.ndarray]:
    """The seeded split of the images outside the held-out sources; `ood` for theirs; and which
    images are removed as near duplicates of a held-out image."""
    held = hold_out([names[im.source] for im in kept], groups.tolist(), cfg.data.split.holdout_sources)
    inside = np.flatnonzero(~held.ood & ~held.removed)
    fractions = cfg.data.split.model_dump(include=set(SPLITS))
    split = assign_splits([labels[i] for i in inside], groups[inside].tolist(),
                          [kept[i].content_hash for i in inside], fractions, cfg.seed)
    splits = np.full(len(kept), OOD, dtype=object)
    splits[inside] = split.splits
    return splits, split.small_labels, held.removed


def _near_duplicate_groups(cache: DecodeCache, signatures: np.ndarray, distance: int) -> np.ndarray:
    """near_duplicate_groups, remembered in the cache for exactly these signatures: a warm ingest skips it."""
    settings = (SIGNATURE_VERSION, distance, COLOUR_TOLERANCE, VERIFY_DISTANCE, MIN_CORRELATION)
    digest = hashlib.sha256("\0".join(map(str, settings)).encode() + b"\0")
    digest.update(signatures.tobytes())
    key = digest.hexdigest()
    groups = cache.load_groups(key)
    if groups is None or groups.size != len(signatures):
        groups = near_duplicate_groups(signatures, distance)
        cache.store_groups(key, groups)
    return groups


def write_lake_files(out_dir: str | Path, lake: Lake, corrupt: Sequence[tuple[int, str, str]]) -> None:
    """manifest.csv, data_summary.json and corrupt_files.txt, each written atomically."""
    out = Path(out_dir)
    atomic_write_text(out / MANIFEST, manifest_text(lake.rows))
    lake.data_summary.write(out)
    lines = [f"# {len(corrupt)} files excluded from the manifest because they cannot be decoded (path<TAB>reason)"]
    lines += [f"{path}\t{reason}" for _, path, reason in sorted(corrupt, key=lambda c: c[1])]
    atomic_write_text(out / CORRUPT_FILES, "\n".join(lines) + "\n")


def record_image_cache(out_dir: str | Path, lake: Lake, cache: ImageCache) -> str:
    """After training filled the image cache: its size on disk (bytes, images, bytes per image) goes into
    the summary as `image_cache`, and `out_dir`'s data_summary.json is written again. Returns the log line."""
    usage = disk_summary(cache)
    lake.data_summary.image_cache = usage
    lake.data_summary.write(out_dir)
    return describe_image_cache(cache, usage)

"""A lake's images, before grouping: sources checked, walked and labelled, every labelled
file decoded once (from the decode cache when path, size and mtime match), byte-identical
copies merged (SPEC §4). `lake.ingest` runs these steps in this order.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from ..config import Config, SourceConfig
from ..errors import UsageError
from ..taxonomy import Taxonomy
from .decode_cache import DecodeCache, cached_result, cached_signature, signed_phash
from .labels import LabelMap, compile_label_map
from .scan import VARIANTS_SIZE, DecodeResult, Fill, decode_files, default_workers
from .split import SIGNATURE
from .walk import FileEntry, walk_labelled


@dataclass
class SourceScan:
    """One enabled source, walked and labelled (nothing decoded yet)."""

    config: SourceConfig
    root: str
    label_map: LabelMap
    labelled: list[tuple[FileEntry, tuple[int, ...]]] = field(default_factory=list)
    unmapped: dict[str, list[str]] = field(default_factory=dict)  # folder -> absolute paths
    dropped: Counter = field(default_factory=Counter)  # label_map key -> files
    used_keys: set[str] = field(default_factory=set)
    candidates: int = 0
    excluded: int = 0
    other_files: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


class LakeImage(NamedTuple):
    """A labelled file that decoded into a good image."""

    source: int  # index of its SourceScan
    entry: FileEntry
    targets: tuple[int, ...]
    content_hash: str
    phash: int  # signed, as the decode cache stores it
    variants: bytes  # the rest of its split.SIGNATURE


class DecodeStats(NamedTuple):
    """The summary's `decode` entry: how many results came from the cache, how many were decoded."""

    cached: int
    decoded: int
    upgraded: int  # cached rows of an older signature version, completed
    cache: str  # the decode cache's file, or ':memory:'


@dataclass(frozen=True)
class Decoded:
    images: list[LakeImage]  # in source order, then walk order
    corrupt: list[tuple[int, str, str]]  # (source index, path, reason)
    stats: DecodeStats


@dataclass(frozen=True)
class Merged:
    """`merge_exact_duplicates`: the kept images in input order, the copies merged into each, the conflicts."""

    kept: list[LakeImage]
    duplicates: list[int]
    conflicts: list[list[LakeImage]]


def check_sources(cfg: Config, taxonomy: Taxonomy) -> tuple[list[SourceConfig], list[LabelMap], list[str]]:
    """The cheap checks, without reading an image: at least one enabled source, label maps
    that name known classes, roots that exist. Returns (enabled sources, label maps, roots).

    The engine runs it first, so a missing dataset fails in a second, not after the model loads.
    """
    enabled = [s for s in cfg.data.sources if s.enabled]
    if not enabled:
        raise UsageError("Every source in data.sources has enabled: false, so there is nothing to ingest",
                         "enable at least one source")
    label_maps = [compile_label_map(s, taxonomy) for s in enabled]
    roots = [os.path.abspath(cfg.source_root(s)) for s in enabled]
    _check_roots(cfg, enabled, roots)
    return enabled, label_maps, roots


def _check_roots(cfg: Config, sources: Sequence[SourceConfig], roots: Sequence[str]) -> None:
    missing = [(s, r) for s, r in zip(sources, roots, strict=True) if not os.path.isdir(r)]
    if not missing:
        return
    lines = [f"source '{s.name}': root not found: {r}" for s, r in missing]
    names = ", ".join(s.name for s, _ in missing)
    raise UsageError(
        "Missing data source" + ("s" if len(missing) > 1 else "") + ":\n  " + "\n  ".join(lines),
        f"fetch them with `sustain data download --config <file>`, fix data.root ({cfg.data.root}) or the "
        f"sources' roots, or set `enabled: false` on each of them in data.sources ({names})")


def scan_source(source: SourceConfig, root: str, label_map: LabelMap, skip: Sequence[Path]) -> SourceScan:
    """Walk one source and resolve every file's label (no decoding yet)."""
    try:
        walked = walk_labelled(root, label_map, exclude=source.exclude, skip=skip)
    except OSError as exc:
        raise UsageError(f"Source '{source.name}': cannot read its root {root}: {exc.strerror or exc}",
                         "check the folder's permissions") from None
    walk = walked.walk
    return SourceScan(source, root, label_map, labelled=walked.labelled, unmapped=walked.unmapped,
                      dropped=walked.dropped, used_keys=walked.used_keys, candidates=len(walk.files),
                      excluded=walk.excluded, other_files=walk.ignored, unreadable=walk.unreadable)


def ingest_workers(setting: int | str) -> int:
    """Decode processes for `data.ingest_workers`."""
    return default_workers() if setting == "auto" else int(setting)


def decode_sources(scans: Sequence[SourceScan], cache: DecodeCache, max_pixels: int, workers: int,
                   progress: bool, fill: Fill | None = None) -> Decoded:
    """Decode results for every labelled file: from the cache when path, size and mtime match.
    `fill` also gets the bytes of each file decoded now (the image cache, `scan.decode_file`)."""
    valid, results, todo, known = _sort_cached(scans, cache, max_pixels)
    if todo:
        bar = tqdm(total=len(todo), desc="Decoding images", unit="img", disable=not progress, leave=False)

        def keep(paths: list[str], decoded: list[DecodeResult]) -> None:
            cache.store([(todo[p], r) for p, r in zip(paths, decoded, strict=True)])
            results.update(zip(paths, decoded, strict=True))
            bar.update(len(paths))

        try:
            decode_files(sorted(todo), max_pixels, workers, keep, known, fill)
        finally:
            bar.close()

    images: list[LakeImage] = []
    corrupt: list[tuple[int, str, str]] = []
    for index, scan in enumerate(scans):
        for entry, targets in scan.labelled:
            good = valid.get(entry.path)
            if good is not None:
                images.append(LakeImage(index, entry, targets, *good))
                continue
            result = results[entry.path]
            if result.ok:
                images.append(LakeImage(index, entry, targets, result.content_hash, signed_phash(result.phash),
                                        result.variants))
            else:
                corrupt.append((index, entry.path, result.reason))
    stats = DecodeStats(cached=len(valid) + len(results) - len(todo), decoded=len(todo) - len(known),
                        upgraded=len(known), cache=cache.location)
    return Decoded(images, corrupt, stats)


def _sort_cached(scans: Sequence[SourceScan], cache: DecodeCache, max_pixels: int
                 ) -> tuple[dict[str, tuple[str, int, bytes]], dict[str, DecodeResult], dict[str, FileEntry],
                            dict[str, DecodeResult]]:
    """Every labelled file against the decode cache: (good images whose cached signature is
    current, other valid results, files to decode, cached results to complete); the cache
    forgets files that no longer exist."""
    cached = cache.load([s.root.rstrip(os.sep) + os.sep for s in scans])
    valid: dict[str, tuple[str, int, bytes]] = {}
    results: dict[str, DecodeResult] = {}
    todo: dict[str, FileEntry] = {}
    known: dict[str, DecodeResult] = {}  # cached rows from an older signature version: upgraded
    walked: set[str] = set()
    for scan in scans:
        for entry, _ in scan.labelled:
            walked.add(entry.path)
            row = cached.get(entry.path)
            good = cached_signature(entry, row, max_pixels)
            if good is not None:
                valid[entry.path] = good
                continue
            hit = cached_result(entry, row, max_pixels)
            if hit is None:
                todo[entry.path] = entry
            elif hit.ok and (hit.variants is None or len(hit.variants) != VARIANTS_SIZE):
                todo[entry.path] = entry
                known[entry.path] = hit
            else:
                results[entry.path] = hit
    stale = [p for p in cached if p not in walked and not os.path.exists(p)]
    if stale:
        cache.forget(stale)
    return valid, results, todo, known


def pack_signatures(images: Sequence[LakeImage]) -> np.ndarray:
    """The images' packed signatures (split.SIGNATURE) in one array, built column-wise: the bytes
    b"".join(phash.to_bytes(8, "big") + variants) would give, without a bytes object per image."""
    out = np.empty(len(images), dtype=SIGNATURE)
    raw = out.view(np.uint8).reshape(len(images), SIGNATURE.itemsize)
    raw[:, :8] = np.array([im.phash for im in images], dtype=np.int64).astype(">i8").view(np.uint8).reshape(-1, 8)
    raw[:, 8:] = np.frombuffer(b"".join([im.variants for im in images]), dtype=np.uint8).reshape(-1, VARIANTS_SIZE)
    return out


def merge_exact_duplicates(images: Sequence[LakeImage]) -> Merged:
    """Merge byte-identical files: the kept images in input order, the copies merged into each, the conflicts.

    Copies that agree keep the first copy. Copies whose labels differ but are
    consistent, i.e. one copy's label is contained in every other's (a fine
    label inside a set label, or a smaller set inside a larger one), keep the
    most specific copy: "one of PLASTIC" and "plastic_straws" both hold when
    it is a straw. Any other disagreement drops every copy: a conflict.
    """
    copies: dict[str, list[int]] = defaultdict(list)
    for i, im in enumerate(images):
        copies[im.content_hash].append(i)
    keep: dict[int, int] = {}
    conflicts: list[list[LakeImage]] = []
    for indices in copies.values():
        if len(indices) == 1:
            keep[indices[0]] = 0
            continue
        best = min(indices, key=lambda i: (len(images[i].targets), i))
        narrow = set(images[best].targets)
        if all(narrow <= set(images[i].targets) for i in indices):
            keep[best] = len(indices) - 1
        else:
            conflicts.append([images[i] for i in indices])
    order = sorted(keep)
    return Merged([images[i] for i in order], [keep[i] for i in order], conflicts)

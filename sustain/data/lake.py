"""Ingestion: the one pass from configured sources to a manifest (SPEC §4, §7).

`ingest` walks the enabled sources in config order (files sorted), resolves
labels, decodes every labelled image once (cached), merges exact duplicates
across sources, groups near duplicates, splits by group, and writes
`manifest.csv`, `data_summary.json` and `corrupt_files.txt`.

Nothing here is silent: every file that does not reach the manifest is
counted under one reason (unmapped, dropped by a null label, corrupt,
excluded, merged as a duplicate, dropped for a label conflict), and the
printed summary says how many and where.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import hashlib
import io
import logging
import os
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from ..artifacts import CORRUPT_FILES, DATA_SUMMARY, MANIFEST
from ..config import Config, SourceConfig
from ..errors import UsageError
from ..taxonomy import Taxonomy
from ..utils import atomic_write_json, atomic_write_text
from .image_cache import ImageCache, disk_summary
from .image_cache import describe as describe_image_cache
from .labels import LabelMap, compile_label_map
from .scan import (
    SIGNATURE_VERSION,
    VARIANTS_SIZE,
    DecodeCache,
    DecodeResult,
    FileEntry,
    cached_result,
    cached_signature,
    decode_files,
    default_workers,
    signed_phash,
    walk_labelled,
)
from .split import (
    COLOUR_TOLERANCE,
    MIN_CORRELATION,
    SIGNATURE,
    SPLITS,
    VERIFY_DISTANCE,
    assign_splits,
    near_duplicate_groups,
)

log = logging.getLogger("sustain.data.lake")

MANIFEST_COLUMNS = ("path", "relpath", "source", "label", "split", "content_hash", "group", "duplicates")
MAX_LISTED = 50  # conflicts / unmapped folders kept in data_summary.json


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One image of the lake. `targets` are class indices: one for a fine label, several for a set."""

    path: str  # absolute
    source: str
    label: str  # class name, set name, or 'a|b|c'
    targets: tuple[int, ...]
    split: str  # 'train' | 'val' | 'test'
    content_hash: str
    group: int  # duplicate group: exact and near duplicates share one
    relpath: str = ""  # relative to the source root, '/'-separated
    duplicates: int = 0  # other byte-identical copies merged into this row


@dataclass
class Lake:
    rows: list[ManifestRow]
    summary: dict[str, Any]
    manifest_hash: str
    sources: list[str]  # enabled source names; index = source id

    def split(self, name: str) -> list[ManifestRow]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; use one of {SPLITS}")
        return [r for r in self.rows if r.split == name]


class _Image(NamedTuple):
    source: int
    entry: FileEntry
    targets: tuple[int, ...]
    content_hash: str
    phash: int  # signed, as the decode cache stores it
    variants: bytes  # the rest of its split.SIGNATURE


def _signatures(images: Sequence[_Image]) -> np.ndarray:
    """The images' packed signatures (split.SIGNATURE) in one array, built column-wise: the bytes
    b"".join(phash.to_bytes(8, "big") + variants) would give, without a bytes object per image."""
    out = np.empty(len(images), dtype=SIGNATURE)
    raw = out.view(np.uint8).reshape(len(images), SIGNATURE.itemsize)
    raw[:, :8] = np.array([im.phash for im in images], dtype=np.int64).astype(">i8").view(np.uint8).reshape(-1, 8)
    raw[:, 8:] = np.frombuffer(b"".join([im.variants for im in images]), dtype=np.uint8).reshape(-1, VARIANTS_SIZE)
    return out


@dataclass
class _SourceScan:
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


# --------------------------------------------------------------------------- the pass


def ingest(cfg: Config, taxonomy: Taxonomy, out_dir: str | Path | None = None, *,
           log_summary: bool = True) -> Lake:
    """Build the lake described by `cfg.data`; write its files into `out_dir` when given.

    Raises UsageError/ConfigError (exit 2) for a missing source root, a
    label_map target outside the taxonomy, an empty lake, and, with
    `data.strict`, unmapped files or a class without images.
    """
    with _gc_paused():
        return _ingest(cfg, taxonomy, out_dir, log_summary)


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


def _ingest(cfg: Config, taxonomy: Taxonomy, out_dir: str | Path | None, log_summary: bool) -> Lake:
    say = log.info if log_summary else log.debug
    warn = log.warning if log_summary else log.debug
    data = cfg.data

    enabled, label_maps, roots = check_sources(cfg, taxonomy)
    disabled = [s.name for s in data.sources if not s.enabled]
    for name in disabled:
        say("⏭️  Skipping %s (enabled: false)", name)

    cache_dir = Path(data.cache_dir).expanduser() if data.cache_dir else Path(data.root).expanduser() / ".sustain_cache"
    scans = []
    for source, root, label_map in zip(enabled, roots, label_maps, strict=True):
        say("📂 Ingesting %s from %s...", source.name, cfg.source_root(source))
        scans.append(_scan_source(source, root, label_map, skip=[cache_dir]))

    cache = DecodeCache(cache_dir)
    try:
        images, corrupt, decode_stats = _decode_sources(scans, cache, data.max_image_pixels,
                                                         _workers(data.ingest_workers), progress=log_summary)
        kept, duplicate_counts, conflicts = merge_exact_duplicates(images)
        groups = _near_duplicate_groups(cache, _signatures(kept), data.near_duplicate_distance)
    finally:
        cache.close()
    names_of = {t: taxonomy.label_name(t) for t in {im.targets for im in kept}}
    labels = [names_of[im.targets] for im in kept]
    fractions = data.split.model_dump()
    split = assign_splits(labels, groups.tolist(), [im.content_hash for im in kept], fractions, cfg.seed)

    names = [s.name for s in enabled]
    rows = [
        ManifestRow(path=im.entry.path, source=names[im.source], label=label, targets=im.targets,
                    split=sp, content_hash=im.content_hash, group=int(g), relpath=im.entry.rel, duplicates=dup)
        for im, label, sp, g, dup in zip(kept, labels, split.splits, groups, duplicate_counts, strict=True)
    ]
    digest = manifest_hash(rows)
    summary = build_summary(
        rows, taxonomy, scans, images=images, corrupt=corrupt, conflicts=conflicts,
        small_labels=split.small_labels, disabled=disabled, fractions=fractions, seed=cfg.seed,
        near_distance=data.near_duplicate_distance, manifest_digest=digest, decode_stats=decode_stats,
        cache_location=cache.location)

    if log_summary:
        for line in format_summary(summary, taxonomy):
            log.info(line)
        for line in summary_warnings(summary):
            warn(line)
    _raise_for_bad_lake(summary, strict=data.strict)

    lake = Lake(rows=rows, summary=summary, manifest_hash=digest, sources=names)
    if out_dir is not None:
        write_lake_files(out_dir, lake, corrupt)
        say("✓ Manifest written: %s (hash %s)", Path(out_dir) / MANIFEST, digest[:16])
    return lake


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


def _workers(setting: int | str) -> int:
    return default_workers() if setting == "auto" else int(setting)


def _check_roots(cfg: Config, sources: Sequence[SourceConfig], roots: Sequence[str]) -> None:
    missing = [(s, r) for s, r in zip(sources, roots, strict=True) if not os.path.isdir(r)]
    if not missing:
        return
    lines = [f"source '{s.name}': root not found: {r}" for s, r in missing]
    raise UsageError(
        "Missing data source" + ("s" if len(missing) > 1 else "") + ":\n  " + "\n  ".join(lines),
        f"fetch them with `sustain data download --config <file>`, fix data.root ({cfg.data.root}) or the "
        f"source's root, or set `enabled: false` on data.sources[{missing[0][0].name}]")


def _scan_source(source: SourceConfig, root: str, label_map: LabelMap, skip: Sequence[Path]) -> _SourceScan:
    """Walk one source and resolve every file's label (no decoding yet)."""
    try:
        walked = walk_labelled(root, label_map, exclude=source.exclude, skip=skip)
    except OSError as exc:
        raise UsageError(f"Source '{source.name}': cannot read its root {root}: {exc.strerror or exc}",
                         "check the folder's permissions") from None
    walk = walked.walk
    return _SourceScan(source, root, label_map, labelled=walked.labelled, unmapped=walked.unmapped,
                       dropped=walked.dropped, used_keys=walked.used_keys, candidates=len(walk.files),
                       excluded=walk.excluded, other_files=walk.ignored, unreadable=walk.unreadable)


def _decode_sources(scans: Sequence[_SourceScan], cache: DecodeCache, max_pixels: int, workers: int,
                    progress: bool) -> tuple[list[_Image], list[tuple[int, str, str]], dict[str, int]]:
    """Decode results for every labelled file: from the cache when path, size and mtime match."""
    cached = cache.load([s.root.rstrip(os.sep) + os.sep for s in scans])
    valid: dict[str, tuple[str, int, bytes]] = {}  # good images whose cached signature is current
    results: dict[str, DecodeResult] = {}  # every other file
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

    if todo:
        bar = tqdm(total=len(todo), desc="Decoding images", unit="img", disable=not progress, leave=False)

        def keep(paths: list[str], decoded: list[DecodeResult]) -> None:
            cache.store([(todo[p], r) for p, r in zip(paths, decoded, strict=True)])
            results.update(zip(paths, decoded, strict=True))
            bar.update(len(paths))

        try:
            decode_files(sorted(todo), max_pixels, workers, keep, known)
        finally:
            bar.close()

    images: list[_Image] = []
    corrupt: list[tuple[int, str, str]] = []  # (source index, path, reason)
    for index, scan in enumerate(scans):
        for entry, targets in scan.labelled:
            good = valid.get(entry.path)
            if good is not None:
                images.append(_Image(index, entry, targets, *good))
                continue
            result = results[entry.path]
            if result.ok:
                images.append(_Image(index, entry, targets, result.content_hash, signed_phash(result.phash),
                                     result.variants))
            else:
                corrupt.append((index, entry.path, result.reason))
    return images, corrupt, {"cached": len(valid) + len(results) - len(todo), "decoded": len(todo) - len(known),
                             "upgraded": len(known)}


# --------------------------------------------------------------------------- decisions (pure)


def merge_exact_duplicates(images: Sequence[_Image]) -> tuple[list[_Image], list[int], list[list[_Image]]]:
    """Merge byte-identical files: (kept images in input order, merged copies per kept image, conflicts).

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
    conflicts: list[list[_Image]] = []
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
    return [images[i] for i in order], [keep[i] for i in order], conflicts


def manifest_hash(rows: Sequence[ManifestRow]) -> str:
    """sha256 over (source/relative path, content hash, label, split) of every row, in sorted order.

    Absolute paths are left out, so the same lake moved to another folder or
    machine has the same hash; relative paths are NFC-normalised because
    macOS stores file names decomposed.
    """
    lines = sorted(
        f"{r.source}/{unicodedata.normalize('NFC', r.relpath)}\t{r.content_hash}\t{r.label}\t{r.split}\n"
        for r in rows)
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8"))
    return digest.hexdigest()


def build_summary(rows: Sequence[ManifestRow], taxonomy: Taxonomy, scans: Sequence[_SourceScan], *,
                  images: Sequence[_Image], corrupt: Sequence[tuple[int, str, str]], conflicts: Sequence[list[_Image]],
                  small_labels: list[dict], disabled: list[str], fractions: dict[str, float], seed: int,
                  near_distance: int, manifest_digest: str, decode_stats: dict[str, int],
                  cache_location: str) -> dict[str, Any]:
    """The data_summary.json content: counts per source, class and split, and every loss."""
    names = [s.config.name for s in scans]
    split_counts = Counter(r.split for r in rows)
    per_source_split: dict[str, Counter] = defaultdict(Counter)
    per_label_split: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        per_source_split[r.source][r.split] += 1
        per_label_split[r.label][r.split] += 1

    conflict_files = Counter(names[im.source] for group in conflicts for im in group)
    loaded_by_source = Counter(names[im.source] for im in images)
    corrupt_by_source = Counter(names[index] for index, _, _ in corrupt)

    sources: dict[str, Any] = {}
    for scan in scans:
        name = scan.config.name
        kept = sum(per_source_split[name].values())
        keys = scan.label_map.keys
        unused = [] if scan.label_map.identity else sorted(
            keys[k] for k in list(scan.label_map.exact) + [g for g, _ in scan.label_map.globs]
            if keys[k] not in scan.used_keys)
        sources[name] = {
            "root": scan.root,
            "images": kept,
            "splits": {s: per_source_split[name][s] for s in SPLITS},
            "files_found": scan.candidates,
            "unmapped": sum(len(v) for v in scan.unmapped.values()),
            "dropped": sum(scan.dropped.values()),
            "corrupt": corrupt_by_source[name],
            "duplicates_merged": loaded_by_source[name] - kept - conflict_files[name],
            "conflicts_dropped": conflict_files[name],
            "excluded": scan.excluded,
            "other_files": len(scan.other_files),
            "unused_label_map_keys": unused,
            "unreadable_folders": scan.unreadable[:MAX_LISTED],
        }

    classes = {c: _split_dict(per_label_split.get(c, Counter())) for c in taxonomy.classes}
    set_labels = {lab: _split_dict(cnt) for lab, cnt in sorted(per_label_split.items()) if lab not in classes}
    fine_counts = {c: v["total"] for c, v in classes.items() if v["total"] > 0}
    ratio_pool = fine_counts or {lab: v["total"] for lab, v in set_labels.items()}
    imbalance = None
    if ratio_pool:
        largest = max(ratio_pool, key=lambda k: (ratio_pool[k], k))
        smallest = min(ratio_pool, key=lambda k: (ratio_pool[k], k))
        imbalance = {"ratio": round(ratio_pool[largest] / ratio_pool[smallest], 2),
                     "largest": {"label": largest, "images": ratio_pool[largest]},
                     "smallest": {"label": smallest, "images": ratio_pool[smallest]}}

    unmapped_folders = sorted(
        ({"source": s.config.name, "folder": folder, "count": len(paths), "example": paths[0]}
         for s in scans for folder, paths in s.unmapped.items()),
        key=lambda u: (-u["count"], u["source"], u["folder"]))
    group_sizes = Counter(r.group for r in rows)
    multi = {g: n for g, n in group_sizes.items() if n > 1}
    mixed = defaultdict(set)
    for r in rows:
        if r.group in multi:
            mixed[r.group].add(r.label)

    return {
        "total_images": len(rows),
        "manifest_hash": manifest_digest,
        "seed": seed,
        "split_fractions": fractions,
        "splits": {s: split_counts[s] for s in SPLITS},
        "sources": sources,
        "disabled_sources": disabled,
        "classes": classes,
        "set_labels": set_labels,
        "empty_classes": [c for c, v in classes.items() if v["total"] == 0],
        "small_labels": small_labels,
        "imbalance_ratio": imbalance["ratio"] if imbalance else None,
        "imbalance": imbalance,
        "unmapped": {"total": sum(u["count"] for u in unmapped_folders), "folders": unmapped_folders[:MAX_LISTED],
                     "folders_total": len(unmapped_folders)},
        "dropped": {"total": sum(sum(s.dropped.values()) for s in scans),
                    "by_key": {f"{s.config.name}: {k}": n for s in scans for k, n in sorted(s.dropped.items())}},
        "corrupt": {"total": len(corrupt), "by_kind": dict(sorted(Counter(r.split(":")[0] for _, _, r in corrupt).items()))},
        "duplicates": {
            "exact_merged": sum(r.duplicates for r in rows),
            "conflicting_dropped": sum(len(g) for g in conflicts),
            "conflicts": [
                {"content_hash": g[0].content_hash,
                 "copies": [{"source": names[im.source], "path": im.entry.path,
                             "label": taxonomy.label_name(im.targets)} for im in g]}
                for g in conflicts[:MAX_LISTED]],
            "near_duplicate_distance": near_distance,
            "near_duplicate_groups": len(multi),
            "near_duplicate_images": sum(multi.values()),
            "near_duplicate_groups_mixed_labels": sum(1 for labs in mixed.values() if len(labs) > 1),
            "largest_group": max(group_sizes.values(), default=0),
        },
        "other_files": sum(len(s.other_files) for s in scans),
        "excluded": sum(s.excluded for s in scans),
        "decode": {**decode_stats, "cache": cache_location},
    }


def _split_dict(counter: Counter) -> dict[str, int]:
    out = {s: counter.get(s, 0) for s in SPLITS}
    out["total"] = sum(out.values())
    return out


def format_summary(summary: dict[str, Any], taxonomy: Taxonomy) -> list[str]:
    """The printed summary: the SPEC §6 lines first, then counts and losses."""
    def splits(d: dict[str, int]) -> str:
        return ", ".join(f"{s} {d[s]:,}" for s in SPLITS)

    out = ["📊 Dataset Summary:", f"  ✓ Total images loaded: {summary['total_images']}",
           f"  Splits: {splits(summary['splits'])}", "  Per source:"]
    for name, s in summary["sources"].items():
        out.append(f"    {name}: {s['images']:,} images ({splits(s['splits'])}) of {s['files_found']:,} image files")
    out.append("  Per class (single-label images):")
    width = max(len(c) for c in taxonomy.classes)
    for c, v in summary["classes"].items():
        out.append(f"    {c:<{width}} {v['total']:>7,}  ({splits(v)})")
    if summary["set_labels"]:
        out.append("  Set labels (one of several classes):")
        for lab, v in summary["set_labels"].items():
            out.append(f"    {_short(lab)}: {v['total']:,}  ({splits(v)})")
    if summary["disabled_sources"]:
        out.append(f"  Skipped (enabled: false): {', '.join(summary['disabled_sources'])}")
    unmapped = summary["unmapped"]
    if unmapped["total"]:
        out.append(f"  ⚠️  Unmapped: {unmapped['total']:,} files in {unmapped['folders_total']} folders "
                   "(add them to the source's label_map, or map them to null):")
        for u in unmapped["folders"][:20]:
            out.append(f"    {u['source']}: {u['folder']}/ ({u['count']:,} files, e.g. {u['example']})")
    else:
        out.append("  Unmapped: 0")
    dropped = summary["dropped"]
    detail = ", ".join(f"{k} {n:,}" for k, n in dropped["by_key"].items())
    out.append(f"  Dropped (label null): {dropped['total']:,}" + (f" ({detail})" if detail else ""))
    corrupt = summary["corrupt"]
    kinds = ", ".join(f"{k} {n}" for k, n in corrupt["by_kind"].items())
    out.append(f"  Corrupt: {corrupt['total']:,}" + (f" ({kinds}; listed in corrupt_files.txt)" if kinds else ""))
    dup = summary["duplicates"]
    out.append(f"  Duplicates: {dup['exact_merged']:,} exact copies merged, {dup['conflicting_dropped']:,} files "
               f"dropped for conflicting labels, {dup['near_duplicate_groups']:,} near-duplicate groups "
               f"({dup['near_duplicate_images']:,} images, Hamming <= {dup['near_duplicate_distance']})")
    if summary["excluded"] or summary["other_files"]:
        out.append(f"  Not considered: {summary['excluded']:,} excluded by `exclude`, "
                   f"{summary['other_files']:,} files without an image extension")
    imb = summary["imbalance"]
    if imb:
        out.append(f"  Imbalance ratio: {imb['ratio']:.2f} (largest {_short(imb['largest']['label'])} "
                   f"{imb['largest']['images']:,}, smallest {_short(imb['smallest']['label'])} "
                   f"{imb['smallest']['images']:,})")
    decode = summary["decode"]
    upgraded = f", {decode['upgraded']:,} given their new signatures" if decode.get("upgraded") else ""
    out.append(f"  Decode cache: {decode['cached']:,} cached, {decode['decoded']:,} decoded{upgraded} ({decode['cache']})")
    out.append(f"  Manifest hash: {summary['manifest_hash'][:16]}")
    return out


def _short(label: str) -> str:
    """A long 'a|b|c…' label, cut for printing (files keep it whole)."""
    return label if len(label) <= 60 else f"{label[:50]}… ({label.count('|') + 1} classes)"


def summary_warnings(summary: dict[str, Any]) -> list[str]:
    """Warnings worth a user's attention, one line each."""
    out = []
    for name, s in summary["sources"].items():
        if s["files_found"] and s["images"] == 0:
            out.append(f"⚠️  Source '{name}' contributed 0 images out of {s['files_found']:,} image files: "
                       "check its label_map and the unmapped report")
        if s["unreadable_folders"]:
            out.append(f"⚠️  Source '{name}': folders that could not be read (their files are missing): "
                       f"{s['unreadable_folders']}")
        if s["unused_label_map_keys"]:
            out.append(f"⚠️  Source '{name}': label_map keys that matched no folder: {s['unused_label_map_keys']}")
    if summary["empty_classes"]:
        out.append(f"⚠️  Classes with no single-label images: {summary['empty_classes']}")
    for small in summary["small_labels"]:
        counts = ", ".join(f"{s} {small['counts'][s]}" for s in SPLITS)
        out.append(f"⚠️  '{_short(small['label'])}' is too small to split: {small['images']} images in {small['groups']} "
                   f"duplicate groups give {counts}; it has no {'/'.join(small['empty_splits'])} images to be "
                   "evaluated on")
    dup = summary["duplicates"]
    total = summary["total_images"]
    if total and dup["largest_group"] > max(20, total // 50):
        out.append(f"⚠️  One near-duplicate group holds {dup['largest_group']:,} images; whole groups share a split, "
                   "so check data.near_duplicate_distance")
    return out


def _raise_for_bad_lake(summary: dict[str, Any], strict: bool) -> None:
    if summary["total_images"] == 0:
        per_source = "; ".join(
            f"{n}: {s['files_found']} image files, {s['unmapped']} unmapped, {s['dropped']} dropped, "
            f"{s['corrupt']} corrupt" for n, s in summary["sources"].items())
        raise UsageError(f"The data lake is empty: no labelled image was found ({per_source})",
                         "check data.root, each source's root and label_map; the unmapped report lists folders "
                         "that match no key")
    if not strict:
        return
    unmapped = summary["unmapped"]
    if unmapped["total"]:
        first = unmapped["folders"][0]
        raise UsageError(
            f"data.strict: {unmapped['total']} files resolve to no label, e.g. {first['count']} in "
            f"source '{first['source']}' folder '{first['folder']}' ({first['example']})",
            f"add '{first['folder'].rsplit('/', 1)[-1]}' to data.sources[{first['source']}].label_map "
            "(null drops it), or set data.strict: false")
    if summary["empty_classes"]:
        raise UsageError(f"data.strict: classes with no single-label images: {summary['empty_classes']}",
                         "add a source with these classes, remove them from taxonomy.classes, "
                         "or set data.strict: false")


# --------------------------------------------------------------------------- files


def write_lake_files(out_dir: str | Path, lake: Lake, corrupt: Sequence[tuple[int, str, str]]) -> None:
    """manifest.csv, data_summary.json and corrupt_files.txt, each written atomically."""
    out = Path(out_dir)
    atomic_write_text(out / MANIFEST, manifest_text(lake.rows))
    atomic_write_json(out / DATA_SUMMARY, lake.summary)
    lines = [f"# {len(corrupt)} files excluded from the manifest because they cannot be decoded (path<TAB>reason)"]
    lines += [f"{path}\t{reason}" for _, path, reason in sorted(corrupt, key=lambda c: c[1])]
    atomic_write_text(out / CORRUPT_FILES, "\n".join(lines) + "\n")


def manifest_text(rows: Sequence[ManifestRow]) -> str:
    """manifest.csv's content, exactly as csv.writer writes it."""
    lines = [",".join(MANIFEST_COLUMNS) + "\n"]
    lines += [f"{r.path},{r.relpath},{r.source},{r.label},{r.split},{r.content_hash},{r.group},{r.duplicates}\n"
              for r in rows]
    text = "".join(lines)
    # csv.writer quotes a field only for a comma, a quote or a line break in it. Without any, joining
    # is what it writes, 5x faster (a tenth of a warm ingest); a path with one goes through csv.
    if '"' not in text and "\r" not in text and text.count("\n") == len(lines) and \
            text.count(",") == (len(MANIFEST_COLUMNS) - 1) * len(lines):
        return text
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows((r.path, r.relpath, r.source, r.label, r.split, r.content_hash, r.group, r.duplicates)
                     for r in rows)
    return buffer.getvalue()


def record_image_cache(out_dir: str | Path, lake: Lake, cache: ImageCache) -> str:
    """After training filled the image cache: its size on disk (bytes, images, bytes per image) goes into
    the summary as `image_cache`, and `out_dir`'s data_summary.json is written again. Returns the log line."""
    usage = disk_summary(cache)
    lake.summary["image_cache"] = usage
    atomic_write_json(Path(out_dir) / DATA_SUMMARY, lake.summary)
    return describe_image_cache(cache, usage)


def read_manifest(path: str | Path, taxonomy: Taxonomy) -> list[ManifestRow]:
    """Rows of a manifest.csv written by `ingest`; labels are resolved against `taxonomy`."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"Manifest not found: {path}", "run `sustain data ingest --config <file>` first")
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise UsageError(f"{path} is not a manifest written by sustain: missing columns {sorted(missing)}")
        for line in reader:
            label = line["label"]
            try:
                targets = taxonomy.resolve(label.split("|") if "|" in label else label)
            except KeyError as exc:
                raise UsageError(f"{path}: label {label!r} is not in this taxonomy ({exc.args[0]})",
                                 "use the taxonomy the manifest was built with") from None
            rows.append(ManifestRow(path=line["path"], source=line["source"], label=label, targets=targets,
                                    split=line["split"], content_hash=line["content_hash"], group=int(line["group"]),
                                    relpath=line["relpath"], duplicates=int(line["duplicates"])))
    return rows

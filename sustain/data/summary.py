"""The data summary of an ingest (SPEC §6): built from what the pass found, printed, checked.

`build_summary` turns an ingest's `IngestFacts` into the `artifacts.DataSummary` record that
`data_summary.json` holds (written and read back by that record); `format_summary` is the
printed summary, `summary_warnings` the lines worth a warning, `check_lake` the refusals.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..artifacts import DataSummary
from ..config import Config
from ..errors import UsageError
from ..taxonomy import Taxonomy
from .collect import Decoded, LakeImage, Merged, SourceScan
from .manifest import ManifestRow
from .split import ALL_SPLITS, OOD, SPLITS

MAX_LISTED = 50  # conflicts / unmapped folders kept in data_summary.json


@dataclass(frozen=True)
class IngestFacts:
    """What one ingest pass found and decided: everything the data summary counts."""

    scans: Sequence[SourceScan]
    decoded: Decoded  # good images, corrupt files, decode cache counts
    merged: Merged  # exact duplicates merged, conflicts dropped
    small_labels: list[dict]  # split.SplitResult.small_labels
    rows: Sequence[ManifestRow]
    manifest_hash: str
    holdout_removed: Sequence[ManifestRow] = ()  # other sources' near duplicates of held-out images


def build_summary(facts: IngestFacts, cfg: Config, taxonomy: Taxonomy) -> DataSummary:
    """Counts per source, class and split, and every loss."""
    rows, scans = facts.rows, facts.scans
    split_counts = Counter(r.split for r in rows)
    per_label: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        per_label[r.label][r.split] += 1
    names = _splits(rows)
    classes = {c: _split_dict(per_label.get(c, Counter()), names) for c in taxonomy.classes}
    set_labels = {lab: _split_dict(cnt, names) for lab, cnt in sorted(per_label.items()) if lab not in classes}
    imbalance = _imbalance(classes, set_labels)
    corrupt = facts.decoded.corrupt
    return DataSummary(
        total_images=len(rows),
        manifest_hash=facts.manifest_hash,
        seed=cfg.seed,
        split_fractions=cfg.data.split.model_dump(include=set(SPLITS)),
        splits={s: split_counts[s] for s in _splits(rows)},
        sources=_sources(facts),
        disabled_sources=[s.name for s in cfg.data.sources if not s.enabled],
        classes=classes,
        set_labels=set_labels,
        empty_classes=[c for c, v in classes.items() if v["total"] == 0],
        small_labels=facts.small_labels,
        imbalance_ratio=imbalance["ratio"] if imbalance else None,
        imbalance=imbalance,
        unmapped=_unmapped(scans),
        dropped={"total": sum(sum(s.dropped.values()) for s in scans),
                 "by_key": {f"{s.config.name}: {k}": n for s in scans for k, n in sorted(s.dropped.items())}},
        corrupt={"total": len(corrupt), "by_kind": dict(sorted(Counter(r.split(":")[0] for _, _, r in corrupt).items()))},
        duplicates=_duplicates(facts, cfg.data.near_duplicate_distance, taxonomy),
        other_files=sum(len(s.other_files) for s in scans),
        excluded=sum(s.excluded for s in scans),
        decode=facts.decoded.stats._asdict(),
        holdout=_holdout(facts, cfg),
    )


def _splits(rows: Sequence[ManifestRow]) -> tuple[str, ...]:
    """train, val, test, and ood when a source is held out."""
    return ALL_SPLITS if any(r.split == OOD for r in rows) else SPLITS


def _holdout(facts: IngestFacts, cfg: Config) -> dict[str, Any]:
    """The held-out sources, their `ood` images, and the near duplicates removed from the other sources."""
    held = cfg.data.split.holdout_sources
    if not held:
        return {}
    removed = facts.holdout_removed
    return {"sources": list(held), "ood_images": sum(r.split == OOD for r in facts.rows),
            "near_duplicates_removed": len(removed),
            "removed_by_source": dict(sorted(Counter(r.source for r in removed).items())),
            "removed_examples": [r.path for r in removed[:MAX_LISTED]]}


def _sources(facts: IngestFacts) -> dict[str, dict[str, Any]]:
    """Per source: where it is, what it gave per split, and what it lost, by reason."""
    names = [s.config.name for s in facts.scans]
    per_source: dict[str, Counter] = defaultdict(Counter)
    labels: dict[str, set[str]] = defaultdict(set)
    for r in facts.rows:
        per_source[r.source][r.split] += 1
        labels[r.source].add(r.label)
    conflict_files = Counter(names[im.source] for group in facts.merged.conflicts for im in group)
    loaded = Counter(names[im.source] for im in facts.decoded.images)
    corrupt = Counter(names[index] for index, _, _ in facts.decoded.corrupt)
    held_removed = Counter(r.source for r in facts.holdout_removed)  # listed in the summary's `holdout`
    sources: dict[str, dict[str, Any]] = {}
    for scan in facts.scans:
        name = scan.config.name
        kept = sum(per_source[name].values())
        keys = scan.label_map.keys
        unused = [] if scan.label_map.identity else sorted(
            keys[k] for k in list(scan.label_map.exact) + [g for g, _ in scan.label_map.globs]
            if keys[k] not in scan.used_keys)
        sources[name] = {
            "root": scan.root,
            "images": kept,
            "labels": len(labels[name]),  # distinct labels (classes or sets) among its kept images
            "splits": {s: per_source[name][s] for s in _splits(facts.rows)},
            "files_found": scan.candidates,
            "unmapped": sum(len(v) for v in scan.unmapped.values()),
            "dropped": sum(scan.dropped.values()),
            "corrupt": corrupt[name],
            "duplicates_merged": loaded[name] - kept - conflict_files[name] - held_removed[name],
            "conflicts_dropped": conflict_files[name],
            "excluded": scan.excluded,
            "other_files": len(scan.other_files),
            "unused_label_map_keys": unused,
            "unreadable_folders": scan.unreadable[:MAX_LISTED],
        }
    return sources


def _imbalance(classes: dict[str, dict[str, int]], set_labels: dict[str, dict[str, int]]) -> dict[str, Any] | None:
    """Largest over smallest label: fine classes with images, else the set labels."""
    fine_counts = {c: v["total"] for c, v in classes.items() if v["total"] > 0}
    pool = fine_counts or {lab: v["total"] for lab, v in set_labels.items()}
    if not pool:
        return None
    largest = max(pool, key=lambda k: (pool[k], k))
    smallest = min(pool, key=lambda k: (pool[k], k))
    return {"ratio": round(pool[largest] / pool[smallest], 2),
            "largest": {"label": largest, "images": pool[largest]},
            "smallest": {"label": smallest, "images": pool[smallest]}}


def _unmapped(scans: Sequence[SourceScan]) -> dict[str, Any]:
    folders = sorted(
        ({"source": s.config.name, "folder": folder, "count": len(paths), "example": paths[0]}
         for s in scans for folder, paths in s.unmapped.items()),
        key=lambda u: (-u["count"], u["source"], u["folder"]))
    return {"total": sum(u["count"] for u in folders), "folders": folders[:MAX_LISTED], "folders_total": len(folders)}


def _duplicates(facts: IngestFacts, near_distance: int, taxonomy: Taxonomy) -> dict[str, Any]:
    """Exact copies merged, conflicting copies dropped, near-duplicate groups."""
    names = [s.config.name for s in facts.scans]
    conflicts: Sequence[list[LakeImage]] = facts.merged.conflicts
    group_sizes = Counter(r.group for r in facts.rows)
    multi = {g: n for g, n in group_sizes.items() if n > 1}
    mixed = defaultdict(set)
    for r in facts.rows:
        if r.group in multi:
            mixed[r.group].add(r.label)
    return {
        "exact_merged": sum(r.duplicates for r in facts.rows),
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
    }


def _split_dict(counter: Counter, names: Sequence[str] = SPLITS) -> dict[str, int]:
    out = {s: counter.get(s, 0) for s in names}
    out["total"] = sum(out.values())
    return out


def format_summary(summary: DataSummary, taxonomy: Taxonomy) -> list[str]:
    """The printed summary: the SPEC §6 lines first, then counts and losses."""
    def splits(d: dict[str, int]) -> str:
        return ", ".join(f"{s} {d[s]:,}" for s in ALL_SPLITS if s in d)

    out = ["📊 Dataset Summary:", f"  ✓ Total images loaded: {summary.total_images}",
           f"  Splits: {splits(summary.splits)}", "  Per source:"]
    for name, s in summary.sources.items():
        out.append(f"    {name}: {s['images']:,} images ({splits(s['splits'])}) of {s['files_found']:,} image files")
    out.append("  Per class (single-label images):")
    width = max(len(c) for c in taxonomy.classes)
    for c, v in summary.classes.items():
        out.append(f"    {c:<{width}} {v['total']:>7,}  ({splits(v)})")
    if summary.holdout:
        h = summary.holdout
        out.append(f"  Held out (split 'ood', never trained on): {', '.join(h['sources'])}: {h['ood_images']:,} images; "
                   f"{h['near_duplicates_removed']:,} near duplicates of them removed from the other sources")
    if summary.set_labels:
        out.append("  Set labels (one of several classes):")
        for lab, v in summary.set_labels.items():
            out.append(f"    {_short(lab)}: {v['total']:,}  ({splits(v)})")
    if summary.disabled_sources:
        out.append(f"  Skipped (enabled: false): {', '.join(summary.disabled_sources)}")
    unmapped = summary.unmapped
    if unmapped["total"]:
        out.append(f"  ⚠️  Unmapped: {unmapped['total']:,} files in {unmapped['folders_total']} folders "
                   "(add them to the source's label_map, or map them to null):")
        for u in unmapped["folders"][:20]:
            out.append(f"    {u['source']}: {u['folder']}/ ({u['count']:,} files, e.g. {u['example']})")
    else:
        out.append("  Unmapped: 0")
    dropped = summary.dropped
    detail = ", ".join(f"{k} {n:,}" for k, n in dropped["by_key"].items())
    out.append(f"  Dropped (label null): {dropped['total']:,}" + (f" ({detail})" if detail else ""))
    corrupt = summary.corrupt
    kinds = ", ".join(f"{k} {n}" for k, n in corrupt["by_kind"].items())
    out.append(f"  Corrupt: {corrupt['total']:,}" + (f" ({kinds}; listed in corrupt_files.txt)" if kinds else ""))
    dup = summary.duplicates
    out.append(f"  Duplicates: {dup['exact_merged']:,} exact copies merged, {dup['conflicting_dropped']:,} files "
               f"dropped for conflicting labels, {dup['near_duplicate_groups']:,} near-duplicate groups "
               f"({dup['near_duplicate_images']:,} images, Hamming <= {dup['near_duplicate_distance']})")
    if summary.excluded or summary.other_files:
        out.append(f"  Not considered: {summary.excluded:,} excluded by `exclude`, "
                   f"{summary.other_files:,} files without an image extension")
    imb = summary.imbalance
    if imb:
        out.append(f"  Imbalance ratio: {imb['ratio']:.2f} (largest {_short(imb['largest']['label'])} "
                   f"{imb['largest']['images']:,}, smallest {_short(imb['smallest']['label'])} "
                   f"{imb['smallest']['images']:,})")
    decode = summary.decode
    upgraded = f", {decode['upgraded']:,} given their new signatures" if decode.get("upgraded") else ""
    out.append(f"  Decode cache: {decode['cached']:,} cached, {decode['decoded']:,} decoded{upgraded} ({decode['cache']})")
    out.append(f"  Manifest hash: {summary.manifest_hash[:16]}")
    return out


def _short(label: str) -> str:
    """A long 'a|b|c…' label, cut for printing (files keep it whole)."""
    return label if len(label) <= 60 else f"{label[:50]}… ({label.count('|') + 1} classes)"


def summary_warnings(summary: DataSummary) -> list[str]:
    """Warnings worth a user's attention, one line each."""
    out = []
    for name, s in summary.sources.items():
        if s["files_found"] and s["images"] == 0:
            out.append(f"⚠️  Source '{name}' contributed 0 images out of {s['files_found']:,} image files: "
                       "check its label_map and the unmapped report")
        if s["unreadable_folders"]:
            out.append(f"⚠️  Source '{name}': folders that could not be read (their files are missing): "
                       f"{s['unreadable_folders']}")
        if s["unused_label_map_keys"]:
            out.append(f"⚠️  Source '{name}': label_map keys that matched no folder: {s['unused_label_map_keys']}")
    if summary.empty_classes:
        out.append(f"⚠️  Classes with no single-label images: {summary.empty_classes}")
    for small in summary.small_labels:
        counts = ", ".join(f"{s} {small['counts'][s]}" for s in SPLITS)
        out.append(f"⚠️  '{_short(small['label'])}' is too small to split: {small['images']} images in {small['groups']} "
                   f"duplicate groups give {counts}; it has no {'/'.join(small['empty_splits'])} images to be "
                   "evaluated on")
    dup = summary.duplicates
    total = summary.total_images
    if total and dup["largest_group"] > max(20, total // 50):
        out.append(f"⚠️  One near-duplicate group holds {dup['largest_group']:,} images; whole groups share a split, "
                   "so check data.near_duplicate_distance")
    return out


def check_lake(summary: DataSummary, strict: bool) -> None:
    """Refuse an empty lake; with `data.strict`, unmapped files and classes without images too."""
    if summary.total_images == 0:
        per_source = "; ".join(
            f"{n}: {s['files_found']} image files, {s['unmapped']} unmapped, {s['dropped']} dropped, "
            f"{s['corrupt']} corrupt" for n, s in summary.sources.items())
        raise UsageError(f"The data lake is empty: no labelled image was found ({per_source})",
                         "check data.root, each source's root and label_map; the unmapped report lists folders "
                         "that match no key")
    if not strict:
        return
    unmapped = summary.unmapped
    if unmapped["total"]:
        first = unmapped["folders"][0]
        raise UsageError(
            f"data.strict: {unmapped['total']} files resolve to no label, e.g. {first['count']} in "
            f"source '{first['source']}' folder '{first['folder']}' ({first['example']})",
            f"add '{first['folder'].rsplit('/', 1)[-1]}' to data.sources[{first['source']}].label_map "
            "(null drops it), or set data.strict: false")
    if summary.empty_classes:
        raise UsageError(f"data.strict: classes with no single-label images: {summary.empty_classes}",
                         "add a source with these classes, remove them from taxonomy.classes, "
                         "or set data.strict: false")

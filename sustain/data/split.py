"""Duplicate groups and the train/val/test split (SPEC §4). Pure functions.

Near duplicates are images whose 64-bit perceptual hashes differ in at most
`d` bits and whose 4x4 colour thumbnails differ by at most
`COLOUR_TOLERANCE` on average (pHash is computed on grey levels, and simple
images of different colours, the same shape on a plain background, collide
in it). Instead of comparing every pair, the hashes are cut into `d + 1`
bands: by the pigeonhole principle two hashes within distance `d` agree
exactly on at least one band, so only hashes sharing a band value are
compared (multi-index hashing). Matches are joined into connected
components, so grouping is transitive.

The split is decided per duplicate group, never per file, so no exact or
near duplicate can sit in two splits. Groups are stratified by label: each
label's image count is divided by the largest-remainder method, and its
groups, largest first and then in a seeded order, each go to the split that
is furthest below its target. The seeded order comes from hashing the seed
with the group's smallest content hash, so the split depends on the files'
contents and the seed only: not on paths, nor on the order the filesystem
lists them in.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SPLITS: tuple[str, ...] = ("train", "val", "test")

# Mean absolute difference (0-255) between two 4x4 RGB thumbnails that still counts
# as the same picture. Re-encoding or resizing moves it by about 1; different
# pictures with a colliding pHash were 4 or more apart on the demo lake.
COLOUR_TOLERANCE = 3.0

_POPCOUNT16 = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distances between two equal-length uint64 arrays."""
    x = np.ascontiguousarray(np.bitwise_xor(a, b), dtype=np.uint64).view(np.uint16).reshape(-1, 4)
    counts = _POPCOUNT16[x]
    return counts[:, 0] + counts[:, 1] + counts[:, 2] + counts[:, 3]


def _band_masks(max_distance: int) -> list[tuple[int, int]]:
    """(shift, mask) of `max_distance + 1` bands covering the 64 bits as evenly as possible."""
    n_bands = min(max_distance + 1, 64)
    widths = [64 // n_bands + (1 if i < 64 % n_bands else 0) for i in range(n_bands)]
    out, shift = [], 0
    for width in widths:
        out.append((shift, (1 << width) - 1))
        shift += width
    return out


def near_duplicate_groups(phashes: Sequence[int] | np.ndarray, max_distance: int,
                          thumbs: Sequence[bytes] | np.ndarray | None = None,
                          colour_tolerance: float = COLOUR_TOLERANCE) -> np.ndarray:
    """Component label per item: items that match, directly or by a chain, share one.

    Two items match when their pHashes are within `max_distance` bits and, if
    `thumbs` (48-byte colour thumbnails) are given, their thumbnails are
    within `colour_tolerance`. Labels are numbered by first appearance.
    """
    values = np.asarray(phashes, dtype=np.uint64)
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    if thumbs is None:
        colours = np.zeros((values.size, 1), dtype=np.uint8)
    elif isinstance(thumbs, np.ndarray):
        colours = thumbs.astype(np.uint8, copy=False)
    else:
        colours = np.frombuffer(b"".join(thumbs), dtype=np.uint8).reshape(values.size, -1)
    # Items identical in both signatures collapse into one before any comparison.
    keys = np.concatenate([values[:, None].view(np.uint8), colours], axis=1)
    _, first_of, inverse = np.unique(np.ascontiguousarray(keys).view(f"V{keys.shape[1]}").ravel(),
                                     return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    unique, unique_colours = values[first_of], colours[first_of].astype(np.int16)
    n = unique.size
    edges_a: list[np.ndarray] = []
    edges_b: list[np.ndarray] = []
    if n > 1:
        for shift, mask in _band_masks(max_distance):
            band = (unique >> np.uint64(shift)) & np.uint64(mask)
            order = np.argsort(band, kind="stable")
            sorted_band = band[order]
            # End (exclusive) of the run of equal band values each position belongs to.
            starts = np.flatnonzero(np.r_[True, sorted_band[1:] != sorted_band[:-1]])
            run_end = np.repeat(np.r_[starts[1:], n], np.diff(np.r_[starts, n]))
            active = np.flatnonzero(run_end - np.arange(n) > 1)
            offset = 1
            while active.size:  # pairs (p, p + offset) inside a run; total work = sum of run_len^2 / 2
                a, b = order[active], order[active + offset]
                close = np.flatnonzero(hamming(unique[a], unique[b]) <= max_distance)
                if close.size:
                    a, b = a[close], b[close]
                    same_colour = np.abs(unique_colours[a] - unique_colours[b]).mean(axis=1) <= colour_tolerance
                    edges_a.append(a[same_colour])
                    edges_b.append(b[same_colour])
                offset += 1
                active = active[run_end[active] - active > offset]
    if edges_a:
        component = connected_components(n, np.concatenate(edges_a), np.concatenate(edges_b))
    else:
        component = np.arange(n)
    # Renumber the components 0, 1, 2, ... by first appearance in the input.
    _, first, dense = np.unique(component[inverse], return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[dense.ravel()]


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component of each of n nodes under the edges (a[i], b[i]): the smallest node index in it.

    Vectorised union-find: hook every edge's larger root onto its smaller one,
    then compress paths by pointer jumping, until no edge joins two roots.
    """
    parent = np.arange(n)
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            return parent
        low, high = np.minimum(ra[differ], rb[differ]), np.maximum(ra[differ], rb[differ])
        np.minimum.at(parent, high, low)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


@dataclass(frozen=True)
class SplitResult:
    splits: list[str]  # one per item, in input order
    small_labels: list[dict]  # labels that left a split with a non-zero fraction empty


def split_targets(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Divide n items by the largest-remainder method; ties go to the earlier split (train first)."""
    raw = {s: round(n * fractions.get(s, 0.0), 9) for s in SPLITS}
    counts = {s: math.floor(v) for s, v in raw.items()}
    left = n - sum(counts.values())
    by_remainder = sorted(SPLITS, key=lambda s: (-(raw[s] - counts[s]), SPLITS.index(s)))
    for s in by_remainder[:left]:
        counts[s] += 1
    return counts


def _order_key(seed: int, group_key: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{group_key}".encode()).digest()


def assign_splits(labels: Sequence[str], groups: Sequence[int], keys: Sequence[str],
                  fractions: Mapping[str, float], seed: int) -> SplitResult:
    """Assign each item to train/val/test, whole duplicate groups at a time.

    labels: the stratum of each item (class name, set name or 'a|b|c').
    groups: the duplicate group of each item.
    keys: a stable identity per item (its content hash), for the seeded order.
    A group whose members carry different labels is stratified under its most
    common label (ties: the alphabetically first).
    """
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    strata: dict[str, list[tuple[int, bytes, int]]] = defaultdict(list)
    for g, items in members.items():
        if len(items) == 1:
            strata[labels[items[0]]].append((1, _order_key(seed, keys[items[0]]), g))
            continue
        counts = Counter(labels[i] for i in items)
        top = min(counts, key=lambda lab: (-counts[lab], lab))
        strata[top].append((len(items), _order_key(seed, min(keys[i] for i in items)), g))

    open_splits = [s for s in SPLITS if fractions.get(s, 0.0) > 0]
    group_split: dict[int, str] = {}
    small: list[dict] = []
    for label in sorted(strata):
        entries = sorted(strata[label], key=lambda e: (-e[0], e[1]))
        n_items = sum(e[0] for e in entries)
        target = split_targets(n_items, fractions)
        assigned = dict.fromkeys(SPLITS, 0)
        for size, _, g in entries:
            best = open_splits[0]  # the first split furthest below its target
            for s in open_splits[1:]:
                if target[s] - assigned[s] > target[best] - assigned[best]:
                    best = s
            group_split[g] = best
            assigned[best] += size
        empty = [s for s in open_splits if assigned[s] == 0]
        if empty:
            small.append({"label": label, "images": n_items, "groups": len(entries),
                          "counts": dict(assigned), "empty_splits": empty})
    return SplitResult([group_split[g] for g in groups], small)

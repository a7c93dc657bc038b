"""Duplicate groups and the train/val/test split (SPEC §4). Pure functions.

A near-duplicate signature (docs/data.md, "Near duplicates") is, per image:

- `phash`: the 64-bit perceptual hash of the whole image;
- six variants, 64-bit pHashes of the image's mirror and of five centred
  crops (91% of each side, and 88%/94% of the width by 88%/94% of the
  height): a copy cut 3-6% per side shows the same content as one of these
  crops, and a mirrored copy shows the mirror;
- `colour`: the mean RGB of the whole image, of its centre, and of its top
  and bottom halves. pHash is computed on grey levels, so the same shape in
  other colours collides in it; means do not move when an image is resized,
  re-encoded or mirrored (a mirror keeps top and bottom), and little when a
  border is cut;
- `detail`: per hash (the pHash, then each variant), the 35 DCT coefficients
  it was thresholded from (0 < u + v <= 7), centred and scaled to int8.

Two images match when one's phash is within `d` bits of the other's phash
or of one of its variants, or within `VERIFY_DISTANCE` bits and the two
hashes' details correlate at `MIN_CORRELATION` or more (the verifier: a
re-encoded copy flips the bits whose coefficients sit near the median, its
coefficients barely move), and their colours are within `COLOUR_TOLERANCE`
on every channel. Instead of comparing every pair, the hashes are cut into
bands: two hashes within `r` bits agree exactly on one of `r + 1` bands, or
differ by at most one bit on one of `r // 2 + 1` bands (pigeonhole), so only
hashes sharing a band value, or one bit away from it, are compared
(multi-index hashing, a sorted join per band). Matches are joined into
connected components, so grouping is transitive.

Sources listed in `data.split.holdout_sources` are taken out first
(`hold_out`): their images form the `ood` split, and an image of another
source that shares a near-duplicate group with one of them is removed (and
counted), so the model never trains, stops early or is tested on a copy of
an image it is scored on out of domain.

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
OOD = "ood"  # the images of data.split.holdout_sources: never trained on, scored beside test
ALL_SPLITS: tuple[str, ...] = (*SPLITS, OOD)

# Centred crops whose pHashes are variants: (width fraction, height fraction). Border crops of
# 3-6% per side keep 88-94% of each side; these five leave at most 3% of scale mismatch.
CROPS: tuple[tuple[float, float], ...] = ((0.91, 0.91), (0.88, 0.88), (0.94, 0.94), (0.88, 0.94), (0.94, 0.88))
N_VARIANTS = 1 + len(CROPS)  # the mirror, then the crops
# The DCT coefficients (u, v) with 0 < u + v <= 7, row by row: the detail kept per hash for the verifier.
DETAIL_INDEX: tuple[int, ...] = tuple(u * 8 + v for u in range(8) for v in range(8) if 0 < u + v <= 7)
# phash, variants, the colour means, then per hash (the pHash, then each variant) its detail:
# the bytes one image's signature packs into. Big-endian; the layout only ever grows at the end.
SIGNATURE = np.dtype([("phash", ">u8"), ("variants", ">u8", (N_VARIANTS,)), ("colour", "u1", (12,)),
                      ("detail", "i1", (1 + N_VARIANTS, len(DETAIL_INDEX)))])

# Largest difference (0-255, any channel) between two images' mean colours that still counts
# as the same picture. Resizing and re-encoding real photos moved the means by at most 1.5,
# a 3-6% border crop the halves' means by more (12 lost one crop in 71 that 16 keeps, with no
# false merge either way: benchmarks/bench_dedupe.py); the same shape in another colour differs by tens.
COLOUR_TOLERANCE = 16

# The verifier: a pair whose hashes are more than `max_distance` but at most VERIFY_DISTANCE bits
# apart still matches when the details of the two hashes correlate at MIN_CORRELATION or more.
# A re-encoded or border-cropped copy moves a pHash by 6-8 bits (coefficients near the median
# change side) while its detail correlates at 0.97-1.0; the closest distinct tiles of the benchmark
# reach 0.95 (benchmarks/bench_dedupe.py, docs/performance.md "Near duplicates").
VERIFY_DISTANCE = 6
MIN_CORRELATION = 0.96

_POPCOUNT16 = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.uint8)
_JOIN_CHUNK = 1 << 21  # candidate pairs compared at once: bounds the memory of a crowded band


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distances between two equal-length uint64 arrays."""
    x = np.ascontiguousarray(np.bitwise_xor(a, b), dtype=np.uint64).view(np.uint16).reshape(-1, 4)
    counts = _POPCOUNT16[x]
    return counts[:, 0] + counts[:, 1] + counts[:, 2] + counts[:, 3]


def _band_masks(radius: int) -> tuple[list[tuple[int, int]], bool]:
    """(shift, mask) of bands covering the 64 bits as evenly as possible, and whether each band
    is probed one bit away too. Two hashes within `radius` bits agree exactly on one of
    `radius + 1` bands, or differ by at most one bit on one of `radius // 2 + 1` bands
    (pigeonhole). Up to 5 bits the first is cheaper; from 6 bits on, the fewer, wider bands
    probed one bit away find far fewer candidates than narrow ones."""
    probe = radius >= 6
    n_bands = min(radius // 2 + 1 if probe else radius + 1, 64)
    widths = [64 // n_bands + (1 if i < 64 % n_bands else 0) for i in range(n_bands)]
    out, shift = [], 0
    for width in widths:
        out.append((shift, (1 << width) - 1))
        shift += width
    return out, probe


def pack_signature(phash: int, variants: Sequence[int], colour: Sequence[int], detail: np.ndarray | None = None
                   ) -> bytes:
    """One image's SIGNATURE bytes: its pHash, N_VARIANTS variant pHashes, 12 colour means and
    the detail of each hash (zeros when not given: such hashes are never verified)."""
    record = np.zeros((), dtype=SIGNATURE)
    record["phash"], record["variants"], record["colour"] = phash, variants, colour
    if detail is not None:
        record["detail"] = detail
    return record.tobytes()


def correlation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of x with the same row of y (0 where either is constant)."""
    x = x.astype(np.float32)
    y = y.astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    y -= y.mean(axis=1, keepdims=True)
    norm = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    return np.divide((x * y).sum(axis=1), norm, out=np.zeros(len(x), dtype=np.float32), where=norm > 0)


def signatures_array(signatures: Sequence[bytes] | np.ndarray) -> np.ndarray:
    """Packed signatures (bytes of the SIGNATURE layout) as a structured array."""
    if isinstance(signatures, np.ndarray):
        return signatures.astype(SIGNATURE, copy=False)
    return np.frombuffer(b"".join(signatures), dtype=SIGNATURE)


def near_duplicate_groups(signatures: Sequence[bytes] | np.ndarray, max_distance: int,
                          colour_tolerance: float = COLOUR_TOLERANCE, verify_distance: int = VERIFY_DISTANCE,
                          min_correlation: float = MIN_CORRELATION) -> np.ndarray:
    """Component label per item: items that match, directly or by a chain, share one.

    `signatures`: one packed SIGNATURE per item. Labels are numbered by first appearance.
    Hashes within `max_distance` bits match; up to `verify_distance` bits, their details must
    also correlate at `min_correlation` or more.
    """
    sig = signatures_array(signatures)
    if sig.size == 0:
        return np.zeros(0, dtype=np.int64)
    # Items with identical signatures collapse into one before any comparison.
    _, first_of, inverse = np.unique(sig.view(f"V{SIGNATURE.itemsize}"), return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    unique = sig[first_of]
    n = unique.size
    index = unique["phash"].astype(np.uint64)
    colours = unique["colour"].astype(np.int16)
    detail = unique["detail"]
    radius = max(max_distance, verify_distance)
    edges_a: list[np.ndarray] = []
    edges_b: list[np.ndarray] = []
    if n > 1:
        # Every hash is looked up against the pHashes at once: the pHash itself, then each variant.
        query = np.concatenate([index, unique["variants"].T.astype(np.uint64).ravel()])
        for a, q, distance in _join(index, query, *_band_masks(radius), radius):
            b, kind = q % n, q // n
            keep = (a != b) & (np.abs(colours[a] - colours[b]).max(axis=1) <= colour_tolerance)
            verify = np.flatnonzero(keep & (distance > max_distance))
            if verify.size:  # the index side is always a pHash (detail 0), the query side hash `kind`
                keep[verify] = correlation(detail[a[verify], 0], detail[b[verify], kind[verify]]) >= min_correlation
            edges_a.append(a[keep])
            edges_b.append(b[keep])
    if edges_a:
        component = connected_components(n, np.concatenate(edges_a), np.concatenate(edges_b))
    else:
        component = np.arange(n)
    # Renumber the components 0, 1, 2, ... by first appearance in the input.
    _, first, dense = np.unique(component[inverse], return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[dense.ravel()]


def _join(index: np.ndarray, query: np.ndarray, bands: list[tuple[int, int]], probe: bool, radius: int):
    """Yield (index item, query item, distance) for pairs within `radius` bits, a chunk at a time.

    Per band: the index sorted by band value; for each query, the run of its own band value
    (and with `probe`, of every value one bit away from it), expanded into candidate pairs and
    checked. A pair found twice comes twice (union-find does not mind)."""
    for shift, mask in bands:
        band = (index >> np.uint64(shift)) & np.uint64(mask)
        order = np.argsort(band, kind="stable")
        sorted_band = band[order]
        sorted_index = index[order]  # candidates are read in sorted order: one gather per band, not per probe
        own = (query >> np.uint64(shift)) & np.uint64(mask)
        width = mask.bit_length()
        # Narrow bands: the start of every value's run in one table, so a lookup is an index, not a search.
        table = np.searchsorted(sorted_band, np.arange((1 << width) + 1, dtype=np.uint64)) if width <= 20 else None
        for flip in [0] + ([1 << bit for bit in range(width)] if probe else []):
            wanted = own ^ np.uint64(flip)
            if table is None:
                lo = np.searchsorted(sorted_band, wanted, "left")
                counts = np.searchsorted(sorted_band, wanted, "right") - lo
            else:
                lo = table[wanted.astype(np.intp)]
                counts = table[wanted.astype(np.intp) + 1] - lo
            yield from _expand_runs(sorted_index, query, order, lo, counts, radius)


def _expand_runs(sorted_index: np.ndarray, query: np.ndarray, order: np.ndarray, lo: np.ndarray,
                 counts: np.ndarray, radius: int):
    """(index item, query item, distance) within `radius`, each query against the `counts[q]`
    index items from sorted position `lo[q]` (`sorted_index` = index[order])."""
    has = np.flatnonzero(counts)
    ends = np.cumsum(counts[has])
    start = 0
    while start < has.size:  # queries whose runs together fit in one chunk (at least one)
        stop = max(start + 1, int(np.searchsorted(ends, (ends[start - 1] if start else 0) + _JOIN_CHUNK)))
        q = has[start:stop]
        reps = counts[q]
        qi = np.repeat(q, reps)
        # the k-th candidate of a run sits at sorted position lo + k: one repeat of (lo - run start)
        pos = np.repeat(lo[q] - (np.cumsum(reps) - reps), reps) + np.arange(qi.size)
        distance = hamming(sorted_index[pos], query[qi])
        close = distance <= radius
        yield order[pos[close]], qi[close], distance[close]
        start = stop


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


@dataclass(frozen=True)
class HoldOut:
    ood: np.ndarray  # bool per item: its source is held out
    removed: np.ndarray  # bool per item: another source's near duplicate of an ood image


def hold_out(sources: Sequence[str], groups: Sequence[int], held_out: Sequence[str]) -> HoldOut:
    """Which items form the `ood` split (their source is in `held_out`) and which items of the other
    sources share a near-duplicate group with one of them and so must leave the lake."""
    src = np.asarray(sources, dtype=object)
    grp = np.asarray(groups, dtype=np.int64)
    ood = np.isin(src, list(held_out)) if len(held_out) else np.zeros(len(src), dtype=bool)
    removed = ~ood & np.isin(grp, grp[ood])
    return HoldOut(ood=ood, removed=removed)

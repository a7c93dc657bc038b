"""Near-duplicate grouping and the grouped, stratified, seeded split (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from sustain.data.split import (
    assign_splits,
    connected_components,
    near_duplicate_groups,
    split_targets,
)

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def _brute_force_groups(hashes: list[int], thumbs: np.ndarray, d: int, tol: float) -> np.ndarray:
    """Every pair compared, components by depth-first search: the definition, slowly."""
    n = len(hashes)
    near = [[j for j in range(n) if bin(hashes[i] ^ hashes[j]).count("1") <= d
             and np.abs(thumbs[i].astype(int) - thumbs[j]).mean() <= tol] for i in range(n)]
    label = [-1] * n
    for start in range(n):
        if label[start] < 0:
            stack, label[start] = [start], start
            while stack:
                for j in near[stack.pop()]:
                    if label[j] < 0:
                        label[j] = start
                        stack.append(j)
    return np.array(label)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs_a = {(x, y) for x, y in zip(a.tolist(), b.tolist(), strict=True)}
    return len(pairs_a) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("distance", [0, 2, 4, 7])
def test_banded_grouping_equals_the_pairwise_definition(distance: int) -> None:
    rng = np.random.default_rng(distance)
    hashes = [int(x) for x in rng.integers(0, 2**63, 120, dtype=np.uint64) * 2 + 1]
    thumbs = rng.integers(0, 256, (120, 48), dtype=np.uint8)
    for base in range(40):  # plant near copies: a few bits flipped, colours nudged
        h = hashes[base]
        for bit in rng.choice(64, size=int(rng.integers(0, 9)), replace=False):
            h ^= 1 << int(bit)
        hashes.append(h)
        thumbs = np.vstack([thumbs, np.clip(thumbs[base].astype(int) + rng.integers(-4, 5, 48), 0, 255).astype(np.uint8)])
    got = near_duplicate_groups(hashes, distance, thumbs, colour_tolerance=3.0)
    want = _brute_force_groups(hashes, thumbs, distance, 3.0)
    assert _same_partition(got, want)
    assert len(set(got.tolist())) < len(hashes)  # something was grouped
    assert got[0] == 0 and set(got.tolist()) == set(range(got.max() + 1))  # numbered by first appearance


def test_equal_phash_with_different_colours_is_not_a_duplicate() -> None:
    thumbs = [bytes([10] * 48), bytes([200] * 48), bytes([11] * 48)]
    groups = near_duplicate_groups([5, 5, 5], 4, thumbs)
    assert groups.tolist() == [0, 1, 0]


def test_union_find_components() -> None:
    a, b = np.array([5, 1, 3, 7, 8]), np.array([1, 3, 0, 8, 9])
    assert connected_components(10, a, b).tolist() == [0, 0, 2, 0, 4, 0, 6, 7, 7, 7]
    rng = np.random.default_rng(0)  # a long random chain needs several hook-and-jump rounds
    order = rng.permutation(500)
    assert set(connected_components(500, order[:-1], order[1:]).tolist()) == {0}


def test_chains_are_transitive() -> None:
    # a-b and b-c are 3 bits apart, a-c is 6: one group at distance 4
    groups = near_duplicate_groups([0b0, 0b111, 0b111111], 4)
    assert len(set(groups.tolist())) == 1


@pytest.mark.parametrize("n, expected", [(10, (8, 1, 1)), (20, (16, 2, 2)), (7, (5, 1, 1)), (5, (4, 1, 0)),
                                         (2, (2, 0, 0)), (1, (1, 0, 0))])
def test_split_targets_largest_remainder(n: int, expected: tuple[int, int, int]) -> None:
    assert tuple(split_targets(n, FRACTIONS).values()) == expected


def _lake(n_per_label: dict[str, int]) -> tuple[list[str], list[int], list[str]]:
    labels, groups, keys = [], [], []
    for label, n in n_per_label.items():
        for i in range(n):
            labels.append(label)
            groups.append(len(groups))
            keys.append(f"{label}-{i:04d}")
    return labels, groups, keys


def test_stratified_exact_counts_per_label() -> None:
    labels, groups, keys = _lake({"a": 30, "b": 10, "PLASTIC": 20})
    result = assign_splits(labels, groups, keys, FRACTIONS, seed=1)
    counts = {(lab, s): 0 for lab in ("a", "b", "PLASTIC") for s in ("train", "val", "test")}
    for lab, s in zip(labels, result.splits, strict=True):
        counts[lab, s] += 1
    assert [counts["a", s] for s in ("train", "val", "test")] == [24, 3, 3]
    assert [counts["b", s] for s in ("train", "val", "test")] == [8, 1, 1]
    assert [counts["PLASTIC", s] for s in ("train", "val", "test")] == [16, 2, 2]
    assert result.small_labels == []


def test_groups_never_straddle_splits_and_the_split_ignores_input_order() -> None:
    rng = np.random.default_rng(0)
    labels, _, keys = _lake({"a": 60, "b": 40})
    groups = [int(g) for g in rng.integers(0, 45, len(labels))]  # groups of various sizes
    result = assign_splits(labels, groups, keys, FRACTIONS, seed=7)
    by_group: dict[int, set[str]] = {}
    for g, s in zip(groups, result.splits, strict=True):
        by_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())
    assert {"train", "val", "test"} <= set(result.splits)

    perm = rng.permutation(len(labels))
    shuffled = assign_splits([labels[i] for i in perm], [groups[i] + 1000 for i in perm], [keys[i] for i in perm],
                             FRACTIONS, seed=7)
    by_key = dict(zip([keys[i] for i in perm], shuffled.splits, strict=True))
    assert [by_key[k] for k in keys] == result.splits

    other_seed = assign_splits(labels, groups, keys, FRACTIONS, seed=8)
    assert other_seed.splits != result.splits


def test_a_class_too_small_to_split_is_reported_and_kept_in_train() -> None:
    labels, groups, keys = _lake({"big": 50, "tiny": 2})
    result = assign_splits(labels, groups, keys, FRACTIONS, seed=0)
    assert [s for lab, s in zip(labels, result.splits, strict=True) if lab == "tiny"] == ["train", "train"]
    assert result.small_labels == [{"label": "tiny", "images": 2, "groups": 2,
                                    "counts": {"train": 2, "val": 0, "test": 0}, "empty_splits": ["val", "test"]}]


def test_zero_fraction_split_gets_nothing() -> None:
    labels, groups, keys = _lake({"a": 9, "b": 3})
    result = assign_splits(labels, groups, keys, {"train": 0.7, "val": 0.3, "test": 0.0}, seed=0)
    assert "test" not in result.splits
    assert result.small_labels == []

"""Near-duplicate grouping and the grouped, stratified, seeded split (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from sustain.data.split import (
    COLOUR_TOLERANCE,
    DETAIL_INDEX,
    MIN_CORRELATION,
    N_VARIANTS,
    SIGNATURE,
    assign_splits,
    connected_components,
    near_duplicate_groups,
    pack_signature,
    split_targets,
)

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def _brute_force_groups(sig: np.ndarray, d: int, tol: float, verify: int) -> np.ndarray:
    """Every pair compared, components by depth-first search: the definition, slowly."""
    n = len(sig)
    hashes = [[int(h), *(int(v) for v in row)] for h, row in zip(sig["phash"], sig["variants"], strict=True)]
    colours = sig["colour"].astype(int)

    def correlated(x: np.ndarray, y: np.ndarray) -> bool:
        x, y = x - x.mean(), y - y.mean()
        norm = np.sqrt((x * x).sum() * (y * y).sum())
        return bool(norm > 0 and (x * y).sum() / norm >= MIN_CORRELATION - 1e-6)

    def close_to(i: int, j: int) -> bool:  # i's pHash against j's pHash or one of j's variants
        for k, h in enumerate(hashes[j]):
            bits = bin(hashes[i][0] ^ h).count("1")
            if bits <= d or (bits <= verify and correlated(sig["detail"][i, 0].astype(float),
                                                             sig["detail"][j, k].astype(float))):
                return True
        return False

    def match(i: int, j: int) -> bool:
        return (close_to(i, j) or close_to(j, i)) and np.abs(colours[i] - colours[j]).max() <= tol

    near = [[j for j in range(n) if match(i, j)] for i in range(n)]
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


def _flip(h: int, rng: np.random.Generator, most: int) -> int:
    for bit in rng.choice(64, size=int(rng.integers(0, most + 1)), replace=False):
        h ^= 1 << int(bit)
    return h


def _planted(seed: int) -> np.ndarray:
    """120 random signatures and 60 near copies of the first 40 (of the image or of a variant), some verified."""
    rng = np.random.default_rng(seed)
    n = 120
    sig = np.zeros(n + 60, dtype=SIGNATURE)
    sig["phash"][:n] = rng.integers(0, 2**63, n, dtype=np.uint64) * 2 + 1
    sig["variants"][:n] = rng.integers(0, 2**63, (n, N_VARIANTS), dtype=np.uint64)
    sig["colour"][:n] = rng.integers(0, 256, (n, 12))
    sig["detail"][:n] = rng.integers(-127, 128, (n, 1 + N_VARIANTS, len(DETAIL_INDEX)))
    for k in range(60):  # plant near copies: of the image itself, or of one of its variants (mirror, crops)
        base = k % 40
        v = int(rng.integers(-1, N_VARIANTS))
        sig["phash"][n + k] = _flip(int(sig["phash"][base] if v < 0 else sig["variants"][base][v]), rng, 10)
        sig["variants"][n + k] = rng.integers(0, 2**63, N_VARIANTS, dtype=np.uint64)
        sig["colour"][n + k] = np.clip(sig["colour"][base].astype(int) + rng.integers(-16, 17, 12) // 2 * (k % 3 > 0) + rng.integers(-16, 17, 12) * (k % 3 == 0), 0, 255)
        # the detail of the copy's pHash: the matched hash's with a little noise (verified) or a lot (not)
        noise = rng.integers(-8, 9, len(DETAIL_INDEX)) * (1 if k % 2 else 6)
        sig["detail"][n + k, 0] = np.clip(sig["detail"][base, v + 1].astype(int) + noise, -127, 127)
    return sig


@pytest.mark.parametrize("distance, verify", [(0, 0), (2, 6), (4, 0), (4, 6), (4, 8), (7, 6)])
def test_banded_grouping_equals_the_pairwise_definition(distance: int, verify: int) -> None:
    sig = _planted(distance * 10 + verify)
    got = near_duplicate_groups(sig, distance, verify_distance=verify)
    want = _brute_force_groups(sig, distance, COLOUR_TOLERANCE, verify)
    assert _same_partition(got, want)
    if verify > distance:  # the verifier joined some pairs beyond `distance`, and refused others
        assert len(set(got.tolist())) < len(set(near_duplicate_groups(sig, distance, verify_distance=0).tolist()))
        assert len(set(got.tolist())) > len(set(near_duplicate_groups(sig, verify, verify_distance=0).tolist()))
    assert len(set(got.tolist())) < len(sig)  # something was grouped
    assert got[0] == 0 and set(got.tolist()) == set(range(got.max() + 1))  # numbered by first appearance


@pytest.mark.parametrize("distance, verify, chunk", [(4, 6, 7), (2, 0, 1)])
def test_grouping_compared_a_few_pairs_at_a_time_finds_the_same_groups(monkeypatch, distance: int, verify: int,
                                                                       chunk: int) -> None:
    """A crowded band is compared in chunks (a large lake's memory bound): the groups must not depend on them."""
    from sustain.data import split

    sig = _planted(distance * 10 + verify)
    whole = near_duplicate_groups(sig, distance, verify_distance=verify)
    monkeypatch.setattr(split, "_JOIN_CHUNK", chunk)  # 1: one query a chunk, however many candidates it has
    assert np.array_equal(near_duplicate_groups(sig, distance, verify_distance=verify), whole)
    packed = [record.tobytes() for record in sig]  # as ingestion passes them: one packed signature per image
    assert np.array_equal(near_duplicate_groups(packed, distance, verify_distance=verify), whole)


def test_equal_phash_with_different_colours_is_not_a_duplicate() -> None:
    sigs = [pack_signature(5, [9] * N_VARIANTS, [c] * 12) for c in (10, 200, 21)]
    groups = near_duplicate_groups(sigs, 4)
    assert groups.tolist() == [0, 1, 0]


def test_a_mirror_or_crop_variant_matches_the_other_images_phash() -> None:
    rng = np.random.default_rng(0)

    def far() -> list[int]:  # variants that match nothing
        return [int(v) for v in rng.integers(0, 2**63, N_VARIANTS, dtype=np.uint64)]

    original = pack_signature(0, far(), [50] * 12)
    mirrored = pack_signature(0xFFFF_0000_FFFF_0000, [0b11] + far()[1:], [52] * 12)  # its mirror hash: 2 bits off
    unrelated = pack_signature(0xF0F0F0F0F0F0F0F0, far(), [50] * 12)
    assert near_duplicate_groups([original, mirrored, unrelated], 4).tolist() == [0, 0, 1]


def test_hashes_further_apart_match_only_when_their_details_correlate() -> None:
    rng = np.random.default_rng(1)
    far = [int(v) for v in rng.integers(0, 2**63, N_VARIANTS, dtype=np.uint64)]
    detail = np.zeros((1 + N_VARIANTS, len(DETAIL_INDEX)), dtype=np.int8)
    detail[0] = rng.integers(-127, 128, len(DETAIL_INDEX))
    alike = detail.copy()
    alike[0] = np.clip(detail[0].astype(int) + rng.integers(-6, 7, len(DETAIL_INDEX)), -127, 127)
    unlike = detail.copy()
    unlike[0] = rng.integers(-127, 128, len(DETAIL_INDEX))
    six_bits = 0b111111
    original = pack_signature(0, far, [50] * 12, detail)
    copy = pack_signature(six_bits, far, [50] * 12, alike)  # 6 bits away, the same detail: re-encoded
    other = pack_signature(six_bits << 20, far, [50] * 12, unlike)  # 6 bits away, another picture
    assert near_duplicate_groups([original, copy, other], 4).tolist() == [0, 0, 1]
    assert near_duplicate_groups([original, copy, other], 4, verify_distance=4).tolist() == [0, 1, 2]


def test_union_find_components() -> None:
    a, b = np.array([5, 1, 3, 7, 8]), np.array([1, 3, 0, 8, 9])
    assert connected_components(10, a, b).tolist() == [0, 0, 2, 0, 4, 0, 6, 7, 7, 7]
    rng = np.random.default_rng(0)  # a long random chain needs several hook-and-jump rounds
    order = rng.permutation(500)
    assert set(connected_components(500, order[:-1], order[1:]).tolist()) == {0}


def test_chains_are_transitive() -> None:
    # a-b and b-c are 3 bits apart, a-c is 6: one group at distance 4
    far = [(1 << 64) - 1] * N_VARIANTS
    groups = near_duplicate_groups([pack_signature(h, far, [0] * 12) for h in (0b0, 0b111, 0b111111)], 4)
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


@pytest.mark.parametrize("size", [1, 2])
def test_the_seed_reorders_single_images_and_whole_groups_alike(size: int) -> None:
    labels, _, keys = _lake({"a": 40})
    groups = [i // size for i in range(len(labels))]
    first = assign_splits(labels, groups, keys, FRACTIONS, seed=0).splits
    assert assign_splits(labels, groups, keys, FRACTIONS, seed=0).splits == first
    assert assign_splits(labels, groups, keys, FRACTIONS, seed=1).splits != first


@pytest.mark.parametrize(("labels", "stratum"), [(["b", "b", "a"], "b"), (["b", "a"], "a")])
def test_a_mixed_group_is_stratified_under_its_most_common_label_ties_alphabetically(labels, stratum) -> None:
    result = assign_splits(labels, [0] * len(labels), [f"k{i}" for i in range(len(labels))], FRACTIONS, seed=0)
    assert [(s["label"], s["images"]) for s in result.small_labels] == [(stratum, len(labels))]


def test_the_largest_group_is_placed_first_and_a_missing_fraction_is_a_closed_split() -> None:
    labels = ["a"] * 10
    groups = [0] * 5 + [1, 2, 3, 4, 5]  # one group of five, five single images
    keys = [f"k{i}" for i in range(10)]
    result = assign_splits(labels, groups, keys, {"train": 0.5, "val": 0.5}, seed=0)  # no "test" key at all
    assert result.splits == ["train"] * 5 + ["val"] * 5  # the five together first, then the singles fill val
    assert result.small_labels == []  # test is closed, not an empty split to report


def test_no_held_out_source_leaves_every_item_in_domain() -> None:
    from sustain.data.split import hold_out

    held = hold_out(["a", "b", "a"], [0, 1, 0], [])
    assert held.ood.tolist() == [False, False, False] and held.removed.tolist() == [False, False, False]


def test_detail_correlation_per_row_and_zero_for_a_constant_row() -> None:
    from sustain.data.split import correlation

    x = np.array([[1.0, 2.0, 4.0], [11.0, 12.0, 14.0], [3.0, 3.0, 3.0], [0.0, 0.1, 0.2]])
    y = np.array([[2.0, 4.0, 8.0], [14.0, 12.0, 11.0], [1.0, 2.0, 3.0], [0.0, 0.1, 0.2]])
    got = correlation(x, y)
    want = [np.corrcoef(a, b)[0, 1] for a, b in zip(x[:2], y[:2], strict=True)]
    assert got.dtype == np.float32
    assert got[:2] == pytest.approx(want, abs=1e-6) and got[2] == 0.0  # each row about its own mean
    assert got[3] == pytest.approx(1.0, abs=1e-6)  # small values still correlate


def test_split_targets_treat_a_missing_fraction_as_zero() -> None:
    assert split_targets(10, {"train": 0.8, "val": 0.2}) == {"train": 8, "val": 2, "test": 0}


def test_no_image_and_one_image() -> None:
    none = near_duplicate_groups([], 4)
    assert none.shape == (0,) and none.dtype == np.int64
    assert near_duplicate_groups([pack_signature(7, [1] * N_VARIANTS, [0] * 12)], 4).tolist() == [0]

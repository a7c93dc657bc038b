"""Per-epoch and final metrics: shapes over all classes, worst-5 naming, set labels, extras."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sustain.evaluate.metrics import (
    bin_accuracy,
    epoch_metrics,
    expected_calibration_error,
    final_metrics,
    format_per_class,
    top_confusions,
    topk_accuracy,
)
from sustain.taxonomy import build_taxonomy

# Names whose alphabetical order differs from their index order, so a name
# taken from the wrong list shows up.
NAMES = ["zeta", "alpha", "mu", "beta", "kappa", "omega", "delta"]


def one_hot_probs(pred: list[int], num_classes: int, confidence: float = 0.9) -> np.ndarray:
    p = np.full((len(pred), num_classes), (1 - confidence) / (num_classes - 1))
    p[np.arange(len(pred)), pred] = confidence
    return p


def targets_for(labels: list[list[int]], num_classes: int) -> np.ndarray:
    t = np.zeros((len(labels), num_classes), dtype=np.float32)
    for row, idx in enumerate(labels):
        t[row, idx] = 1.0
    return t


# true → predicted, hand-computed F1 per class:
# zeta 2/2 right + 1 FP (0.8); alpha 1 of 2 (2/3); mu 1 right + 1 FP (2/3);
# beta 0 of 2 (0.0); kappa 1 right + 2 FP (0.5); omega absent; delta 1 of 2 (2/3).
HAND_TRUE = [0, 0, 1, 1, 2, 3, 3, 4, 6, 6]
HAND_PRED = [0, 0, 1, 2, 2, 4, 4, 4, 6, 0]


def hand_case():
    taxonomy = build_taxonomy(classes=NAMES, bins=None)
    probs = one_hot_probs(HAND_PRED, len(NAMES))
    targets = targets_for([[i] for i in HAND_TRUE], len(NAMES))
    return taxonomy, probs, targets


def test_worst_five_match_hand_computed_names_f1_and_support():
    taxonomy, probs, targets = hand_case()
    m = epoch_metrics(probs, targets, taxonomy)

    names = [w[0] for w in m["worst"]]
    assert names == ["beta", "kappa", "alpha", "mu", "delta"]  # ties keep taxonomy order
    assert [w[2] for w in m["worst"]] == [2, 1, 2, 1, 2]
    assert [w[1] for w in m["worst"]] == pytest.approx([0.0, 0.5, 2 / 3, 2 / 3, 2 / 3])
    assert m["per_class_f1"] == pytest.approx([0.8, 2 / 3, 2 / 3, 0.0, 0.5, 0.0, 2 / 3])
    assert m["acc"] == pytest.approx(6 / 10)
    # macro over classes seen in y_true ∪ y_pred: omega (never seen) is left out
    assert m["macro_f1"] == pytest.approx((0.8 + 3 * (2 / 3) + 0.5) / 6)


def test_confusion_is_c_by_c_and_absent_classes_have_support_zero():
    taxonomy = build_taxonomy()  # master_30
    # val holds only classes 0, 1 and 2; the model also predicts class 29
    probs = one_hot_probs([0, 1, 29, 2], 30)
    targets = targets_for([[0], [1], [1], [2]], 30)
    m = epoch_metrics(torch.from_numpy(probs), torch.from_numpy(targets), taxonomy)

    assert m["confusion"].shape == (30, 30)
    assert m["confusion"].dtype == np.int64
    assert m["confusion"][1, 29] == 1 and m["confusion"].sum() == 4
    assert len(m["support"]) == len(m["per_class_f1"]) == 30
    assert m["support"][:3] == [1, 2, 1] and sum(m["support"][3:]) == 0
    # classes without val samples never appear among the worst
    assert {w[0] for w in m["worst"]} <= {"aerosol_cans", "aluminum_food_cans", "aluminum_soda_cans"}


def test_set_labelled_samples_count_only_towards_set_accuracy():
    taxonomy, probs, targets = hand_case()
    fine_only = epoch_metrics(probs, targets, taxonomy)
    # two set samples {alpha, mu}: one predicted inside the set, one outside
    set_probs = one_hot_probs([2, 6], len(NAMES))
    set_targets = targets_for([[1, 2], [1, 2]], len(NAMES))
    m = epoch_metrics(np.vstack([probs, set_probs]), np.vstack([targets, set_targets]), taxonomy)

    assert m["n_fine"] == 10 and m["n_set"] == 2
    assert m["set_acc"] == pytest.approx(0.5)
    for key in ("acc", "macro_f1", "per_class_f1", "support"):
        assert m[key] == fine_only[key]
    assert (m["confusion"] == fine_only["confusion"]).all()
    assert fine_only["set_acc"] is None


def test_format_per_class_prints_the_spec_lines():
    taxonomy, probs, targets = hand_case()
    lines = format_per_class(epoch_metrics(probs, targets, taxonomy), taxonomy)
    assert lines[:3] == ["📊 Per-Class Performance:", "  Macro F1: 0.5500", "  Worst 5 classes:"]
    assert lines[3:5] == ["    beta: F1=0.0000, Support=2", "    kappa: F1=0.5000, Support=1"]
    assert len(lines) == 8


def test_bin_accuracy_uses_true_class_bins_and_single_bin_sets():
    taxonomy = build_taxonomy()
    idx = taxonomy.index
    rows = [
        ([idx("newspaper")], idx("cardboard_boxes")),  # recycle → recycle: right bin, wrong class
        ([idx("food_waste")], idx("paper_cups")),  # compost → landfill: wrong
        (list(taxonomy.resolve("ORGANIC")), idx("tea_bags")),  # set inside compost: right
        (list(taxonomy.resolve("PLASTIC")), idx("clothing")),  # set spans bins: left out
    ]
    probs = one_hot_probs([pred for _, pred in rows], 30)
    targets = targets_for([t for t, _ in rows], 30)
    b = bin_accuracy(probs, targets, taxonomy)
    assert b["n"] == 3 and b["acc"] == pytest.approx(2 / 3)
    assert b["per_bin"]["recycle"] == {"acc": 1.0, "n": 1}
    assert b["per_bin"]["compost"] == {"acc": 0.5, "n": 2}
    assert b["per_bin"]["donate"] == {"acc": None, "n": 0}
    assert bin_accuracy(probs, targets, build_taxonomy(classes=list(taxonomy.classes), bins=None))["acc"] is None


def test_top5_ece_per_source_and_top_confusions():
    taxonomy, _, targets = hand_case()
    # true class ranked 2nd for every sample: top-1 wrong, top-5 right
    probs = np.full((len(HAND_TRUE), 7), 0.01)
    probs[np.arange(10), [(t + 1) % 7 for t in HAND_TRUE]] = 0.6
    probs[np.arange(10), HAND_TRUE] = 0.3
    assert topk_accuracy(probs, targets, k=1) == 0.0
    assert topk_accuracy(probs, targets, k=5) == 1.0
    # always 60% confident and always wrong: ECE is 0.6
    assert expected_calibration_error(probs, targets) == pytest.approx(0.6)

    taxonomy, probs, targets = hand_case()
    m = final_metrics(probs, targets, taxonomy, source_ids=[0] * 5 + [1] * 5, sources=["lake_a", "lake_b"])
    assert m["per_source"]["lake_a"] == {"acc": pytest.approx(4 / 5), "n_fine": 5, "set_acc": None, "n_set": 0}
    assert m["per_source"]["lake_b"]["acc"] == pytest.approx(2 / 5)
    assert m["top5_acc"] >= m["acc"] and m["bin"]["acc"] is None
    assert top_confusions(m["confusion"], taxonomy.classes, k=2) == [("beta", "kappa", 2), ("alpha", "mu", 1)]
    json.dumps({k: v for k, v in m.items() if k != "confusion"})  # plain types only


def test_no_fine_samples_gives_zero_scores_and_full_matrix():
    taxonomy = build_taxonomy(classes=NAMES, bins=None)
    m = epoch_metrics(np.zeros((0, 7)), np.zeros((0, 7)), taxonomy)
    assert m["acc"] == 0.0 and m["worst"] == [] and m["confusion"].shape == (7, 7)
    assert m["confusion"].dtype == np.int64  # counts, as with samples
    with pytest.raises(ValueError, match=r"\[N, 7\]"):
        epoch_metrics(np.zeros((2, 5)), np.zeros((2, 5)), taxonomy)


def test_ece_by_hand_with_a_confidence_on_a_bin_edge():
    # Four bins of 0.25; a confidence on an edge belongs to the bin below (0.5 → [0.25, 0.5]).
    probs = np.array([[0.2] * 5,  # tie: the argmax is class 0, the truth class 1 → wrong, bin 0
                      [0.5, 0.2, 0.1, 0.1, 0.1],  # right, bin 1
                      [0.1, 0.6, 0.1, 0.1, 0.1],  # wrong, bin 2
                      [0.0, 0.0, 0.9, 0.1, 0.0],  # right, bin 3
                      [0.0, 0.0, 0.0, 1.0, 0.0]])  # right, bin 3
    targets = targets_for([[1], [0], [0], [2], [3]], 5)
    # bin 0: 1/5·|0 − 0.2|, bin 1: 1/5·|1 − 0.5|, bin 2: 1/5·|0 − 0.6|, bin 3: 2/5·|1 − 0.95|
    assert expected_calibration_error(probs, targets, n_bins=4) == pytest.approx(0.04 + 0.1 + 0.12 + 0.02)
    assert expected_calibration_error(probs, targets) == pytest.approx(  # 15 bins: 0.9 and 1.0 apart
        0.04 + 0.1 + 0.12 + 0.2 * 0.1 + 0.0)


def test_top5_by_default_and_a_miss_counts():
    classes = 8
    probs = np.tile(np.linspace(0.2, 0.05, classes), (3, 1))  # class 0 most probable, class 7 least
    targets = targets_for([[0], [5], [4]], classes)  # ranks 1, 6 and 5
    assert topk_accuracy(probs, targets) == pytest.approx(2 / 3)
    assert topk_accuracy(probs, targets, k=1) == pytest.approx(1 / 3)


def test_top_confusions_keep_ten_largest_in_row_major_order_on_ties_and_never_zero_cells():
    c = np.zeros((5, 5), dtype=np.int64)
    cells = [(i, j) for i in range(5) for j in range(5) if i != j]  # 20 off-diagonal cells
    for i, j in cells[:12]:
        c[i, j] = 1
    c[4, 0] = 3
    names = list("abcde")
    top = top_confusions(c, names)
    assert len(top) == 10 and top[0] == ("e", "a", 3)
    assert top[1:] == [(names[i], names[j], 1) for i, j in cells[:9]]  # ties: row by row
    assert top_confusions(c, names, k=20) == [("e", "a", 3)] + [(names[i], names[j], 1) for i, j in cells[:12]]


def test_per_source_accuracy_counts_each_sources_own_fine_and_set_samples():
    from sustain.evaluate.metrics import per_source_accuracy

    probs = one_hot_probs([0, 1, 2, 0, 3], 4)
    targets = targets_for([[0], [0, 1], [2], [1, 2], [3]], 4)  # rows 1 and 3 are sets
    ids = [0, 0, 1, 1, 2]
    out = per_source_accuracy(probs, targets, ids, sources=["a", "b"])  # id 2 has no name
    assert out == {"a": {"acc": 1.0, "n_fine": 1, "set_acc": 1.0, "n_set": 1},
                   "b": {"acc": 1.0, "n_fine": 1, "set_acc": 0.0, "n_set": 1},
                   "source_2": {"acc": 1.0, "n_fine": 1, "set_acc": None, "n_set": 0}}
    only_sets = per_source_accuracy(probs[[1]], targets[[1]], [0])
    assert only_sets == {"source_0": {"acc": None, "n_fine": 0, "set_acc": 1.0, "n_set": 1}}


def test_final_metrics_add_bin_top5_and_ece_to_the_epoch_metrics():
    taxonomy = build_taxonomy()
    classes = taxonomy.num_classes
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(classes), size=40)
    targets = targets_for([[int(i)] for i in rng.integers(0, classes, 40)], classes)
    m = final_metrics(probs, targets, taxonomy)
    assert m["per_source"] == {}
    assert m["bin"] == bin_accuracy(probs, targets, taxonomy) and m["bin"]["n"] > 0
    assert m["top5_acc"] == topk_accuracy(probs, targets, k=5) != topk_accuracy(probs, targets, k=6)
    assert m["ece"] == expected_calibration_error(probs, targets) > 0


def test_bin_accuracy_skips_rows_without_one_bin_and_refuses_mismatched_rows():
    taxonomy = build_taxonomy()
    idx = taxonomy.index
    rows = [(list(taxonomy.resolve("PLASTIC")), idx("clothing")),  # spans bins: skipped, the next still counts
            ([idx("newspaper")], idx("cardboard_boxes"))]
    probs = one_hot_probs([pred for _, pred in rows], 30)
    targets = targets_for([t for t, _ in rows], 30)
    assert bin_accuracy(probs, targets, taxonomy)["n"] == 1
    assert bin_accuracy(probs[:1], targets[:1], taxonomy) == {
        "acc": None, "n": 0, "per_bin": {b: {"acc": None, "n": 0} for b in taxonomy.bins}}
    no_bins = build_taxonomy(classes=list(taxonomy.classes), bins=None)
    assert bin_accuracy(probs, targets, no_bins) == {"acc": None, "n": 0, "per_bin": {}}
    with pytest.raises(ValueError):
        bin_accuracy(probs, targets[:1], taxonomy)


def test_metrics_take_bf16_logits_that_still_carry_their_graph_and_warn_about_nothing():
    import warnings

    taxonomy, probs, targets = hand_case()
    logits = torch.tensor(probs, dtype=torch.bfloat16, requires_grad=True) * 1  # as an autocast step leaves them
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # beta is never predicted: 0/0 precision is 0, without a warning per epoch
        m = epoch_metrics(logits, torch.tensor(targets), taxonomy)
    assert m["acc"] == pytest.approx(0.6) and m["macro_f1"] == pytest.approx(0.55)

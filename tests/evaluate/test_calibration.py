"""Temperature scaling and the accept-or-review threshold (issue #29): the pure parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sustain.evaluate.calibration import (
    MIN_FIT_IMAGES,
    apply_temperature,
    calibrate,
    choose_temperature,
    ece_before_after,
    fit_temperature,
)
from sustain.evaluate.selective import AcceptPolicy, choose_threshold, coverage_summary, interval
from sustain.taxonomy import Taxonomy

TAX = Taxonomy(classes=("a", "b", "c", "d"), bins={"x": ("a", "b"), "y": ("c", "d")})


def synthetic(n: int, true_t: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / true_t): true_t is the right temperature."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 4, generator=g) * 3
    labels = torch.multinomial((logits / true_t).softmax(dim=1), 1, generator=g).squeeze(1)
    targets = np.eye(4, dtype=np.float32)[labels.numpy()]
    return logits, labels, targets


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_fit_recovers_a_known_temperature(true_t):
    logits, labels, _ = synthetic(20000, true_t)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


def test_temperature_keeps_argmax_and_lowers_ece():
    logits, _, targets = synthetic(5000, 2.0, seed=1)
    fit = choose_temperature("auto", logits, targets)
    assert fit.method == "fitted" and fit.nll_after < fit.nll_before
    calibrated, raw = apply_temperature(logits, fit.temperature), apply_temperature(logits, 1.0)
    assert np.array_equal(calibrated.argmax(axis=1), raw.argmax(axis=1))  # accuracy cannot move
    before, after = ece_before_after(logits, targets, fit.temperature)
    assert after < 0.03 < before


def test_too_few_val_images_keep_t_1_with_a_reason():
    logits, _, targets = synthetic(MIN_FIT_IMAGES - 1, 2.0)
    fit = choose_temperature("auto", logits, targets)
    assert fit.temperature == 1.0 and fit.method == "kept"
    assert f"{MIN_FIT_IMAGES - 1} fine-labelled" in fit.reason and str(MIN_FIT_IMAGES) in fit.reason


def test_off_and_a_fixed_number_are_used_as_given():
    logits, _, targets = synthetic(500, 2.0)
    assert choose_temperature("off", logits, targets).temperature == 1.0
    fixed = choose_temperature(1.7, logits, targets)
    assert fixed.temperature == 1.7 and fixed.method == "fixed"


def test_a_perfect_val_split_keeps_t_1():
    logits = torch.eye(4).repeat(30, 1) * 2
    fit = choose_temperature("auto", logits, logits.numpy())
    assert fit.temperature == 1.0 and "no misclassified" in fit.reason


def test_threshold_meets_its_lower_bound():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 1.0, 3000)
    right = rng.uniform(size=3000) < conf  # calibrated: accuracy rises with confidence
    t = choose_threshold(conf, right, 0.95)
    assert t is not None
    accepted = conf >= t
    lo, _ = interval(right[accepted].sum(), accepted.sum())
    assert lo >= 0.95
    # the next lower confidence would break the bound: the threshold is the widest the data backs
    below = conf[conf < t].max()
    wider = conf >= below
    assert interval(right[wider].sum(), wider.sum())[0] < 0.95


def test_no_threshold_when_the_target_cannot_be_backed():
    conf = np.linspace(0.5, 1.0, 100)
    assert choose_threshold(conf, np.ones(100, dtype=bool), 0.98) is None  # 100 right of 100: bound 0.964
    assert choose_threshold(conf, np.ones(200, dtype=bool)[:100], 0.95) is not None
    summary = coverage_summary(conf, np.ones(100, dtype=bool), None, 0.98)
    assert summary["accepted"] == 0 and summary["review"] == 100 and summary["status"] == "nothing accepted"


def test_bin_decision_sums_the_bins_probability():
    probs = np.array([[0.45, 0.40, 0.10, 0.05],   # class a at 0.45, but bin x at 0.85
                      [0.30, 0.05, 0.35, 0.30]])  # class c at 0.35, bin y at 0.65
    policy = AcceptPolicy(0.9, "bin", 0.8)
    assert policy.decisions(probs, TAX) == ["accept", "review"]
    assert AcceptPolicy(0.9, "class", 0.8).decisions(probs, TAX) == ["review", "review"]
    assert AcceptPolicy(0.9, "bin", None).decisions(probs, TAX) == ["review", "review"]


def test_calibrate_record_holds_both_levels():
    logits, _, targets = synthetic(3000, 0.5, seed=2)
    c = calibrate(logits, targets, TAX, "auto", 0.9)
    assert c["accept_on"] == "bin" and set(c["accept_thresholds"]) == {"bin", "class"}
    assert c["temperature"] == pytest.approx(0.5, rel=0.1)

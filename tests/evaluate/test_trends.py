"""Trend warnings and the Success Criteria Checklist, driven by crafted metrics histories."""

from __future__ import annotations

import math

import pytest

from sustain.evaluate.trends import (
    REQUIRED_ARTIFACTS,
    artifacts_present,
    format_checklist,
    format_trend_warning,
    success_checklist,
    trend_warnings,
)


def history(train_loss, val_loss=None, val_acc=None, f1=None, skipped=None):
    n = len(train_loss)
    return {
        "epoch": list(range(1, n + 1)),
        "train_loss": list(train_loss),
        "train_acc": [0.5] * n,
        "val_loss": list(val_loss if val_loss is not None else [1.0] * n),
        "val_acc": list(val_acc if val_acc is not None else [0.5 + 0.05 * i for i in range(n)]),
        "val_macro_f1": list(f1 if f1 is not None else [0.5 + 0.05 * i for i in range(n)]),
        "lr": [1e-4] * n,
        "skipped": list(skipped if skipped is not None else [0.0] * n),
        "health": ["healthy"] * n,
    }


HEALTHY = history(
    train_loss=[2.9, 2.1, 1.6, 1.2, 0.9, 0.7],
    val_loss=[2.6, 1.9, 1.5, 1.2, 1.0, 0.95],
    val_acc=[0.35, 0.52, 0.63, 0.71, 0.76, 0.79],
    f1=[0.30, 0.48, 0.58, 0.66, 0.72, 0.75],
)


def ids(warnings):
    return {w["id"]: w["epoch"] for w in warnings}


# --------------------------------------------------------------------------- trend warnings


def test_healthy_run_has_no_warnings():
    assert trend_warnings(HEALTHY) == []
    assert trend_warnings({}) == []  # nothing recorded yet
    assert trend_warnings(history([2.0])) == []


def test_train_loss_rising_three_epochs_in_a_row():
    h = history([2.0, 1.5, 1.6, 1.7, 1.8, 1.9], val_acc=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    found = ids(trend_warnings(h))
    assert found == {"train_loss_rising": 5}  # epochs 3, 4 and 5 each rose
    message = trend_warnings(h)[0]["message"]
    assert "learning rate" in message and "1.5000" in message and "1.8000" in message

    two_rises = history([2.0, 1.5, 1.6, 1.7, 1.4, 1.5], val_acc=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    assert "train_loss_rising" not in ids(trend_warnings(two_rises))


def test_val_acc_flat_within_a_tenth_of_a_point_for_three_epochs():
    h = history([2.0, 1.8, 1.6, 1.4, 1.2, 1.0], val_acc=[0.40, 0.612, 0.6125, 0.6115, 0.6129, 0.70])
    found = trend_warnings(h)
    assert ids(found) == {"val_acc_flat": 5}
    assert "61.20%" in found[0]["message"] and "more epochs" in found[0]["message"]

    drifting = history([2.0, 1.8, 1.6, 1.4, 1.2], val_acc=[0.40, 0.612, 0.6125, 0.614, 0.615])
    assert trend_warnings(drifting) == []  # 0.2 pp away: still moving
    saturated = history([2.0, 1.8, 1.6, 1.4, 1.2], val_acc=[0.9, 1.0, 1.0, 1.0, 1.0])
    assert trend_warnings(saturated) == []  # a plateau at 100% is not a problem


def test_overfitting_needs_two_epochs_of_diverging_losses():
    h = history(train_loss=[2.0, 1.5, 1.1, 0.8, 0.6], val_loss=[1.8, 1.4, 1.3, 1.35, 1.5],
                val_acc=[0.5, 0.6, 0.7, 0.72, 0.73])
    found = trend_warnings(h)
    assert ids(found) == {"overfitting": 5}
    assert "early stopping" in found[0]["message"] and "1.3000 → 1.5000" in found[0]["message"]

    one_epoch = {**h, "val_loss": [1.8, 1.4, 1.3, 1.35, 1.2]}
    assert trend_warnings(one_epoch) == []


def test_warnings_report_the_first_epoch_and_are_stable_as_history_grows():
    h = history([2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 2.6], val_acc=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    first = trend_warnings({k: v[:4] for k, v in h.items()})
    assert ids(first) == {"train_loss_rising": 4}
    assert ids(trend_warnings(h)) == {"train_loss_rising": 4}  # same id, same epoch: printed once
    assert format_trend_warning(first[0]).startswith("⚠️  Epoch 4: Train loss rising")


def test_non_finite_and_missing_entries_do_not_raise_or_fake_a_trend():
    h = history([2.0, 1.5, math.nan, 1.7, 1.8], val_acc=[0.5, None, 0.5, 0.5, 0.5])
    assert trend_warnings(h) == []  # the NaN breaks the streak, the None breaks the plateau


# --------------------------------------------------------------------------- success checklist

GOOD_RUN = {"completed": True, "artifacts": {name: True for name in REQUIRED_ARTIFACTS},
            "skipped_steps": 3, "total_steps": 1200}


def test_checklist_on_a_good_run_passes_every_item():
    items = success_checklist(HEALTHY, GOOD_RUN)
    assert [it["id"] for it in items] == ["completed", "loss_decreased", "val_acc_50", "val_acc_70", "macro_f1",
                                          "losses", "nonfinite", "artifacts"]
    assert all(it["passed"] for it in items), items
    lines = format_checklist(items)
    assert lines[0] == "Success Criteria Checklist:"
    assert "  ✓ Best val accuracy > 70% (best 79.00%)" in lines
    assert "  ✓ Loss decreased (train loss 2.9000 → 0.7000)" in lines
    assert lines[-1] == "  8/8 criteria met"


def test_checklist_on_a_bad_run_names_what_failed():
    bad = history(train_loss=[3.2, 3.3, 3.4], val_loss=[3.0, 3.1, 3.3], val_acc=[0.05, 0.06, 0.06],
                  f1=[0.02, 0.03, 0.03], skipped=[0.0, 0.12, 0.3])
    run = {"completed": False, "stop_reason": "critical health: 30% of steps skipped",
           "artifacts": {"last.pth": True, "best_model.safetensors": False}}
    items = {it["id"]: it for it in success_checklist(bad, run)}
    assert not any(it["passed"] for it in items.values())
    assert "critical health" in items["completed"]["detail"]
    assert items["loss_decreased"]["detail"] == "train loss 3.2000 → 3.4000"
    assert items["nonfinite"]["detail"] == "14.00% of steps skipped"  # mean of the epochs' shares
    assert items["artifacts"]["detail"] == "missing: best_model.safetensors"
    assert "  ✗ Macro-F1 > 0.6 (best 0.0300)" in format_checklist(list(items.values()))


@pytest.mark.parametrize("best_acc, expect", [(0.49, (False, False)), (0.55, (True, False)), (0.71, (True, True))])
def test_val_accuracy_items_use_the_best_epoch(best_acc, expect):
    h = history([2.0, 1.5, 1.0], val_acc=[0.3, best_acc, 0.2])
    items = {it["id"]: it["passed"] for it in success_checklist(h, GOOD_RUN)}
    assert (items["val_acc_50"], items["val_acc_70"]) == expect


def test_checklist_skipped_limit_and_missing_data():
    h = history([2.0, 0.5])
    assert {it["id"]: it["passed"] for it in success_checklist(h, {**GOOD_RUN, "skipped_steps": 59})}["nonfinite"] is True  # 4.9%
    too_many = {**GOOD_RUN, "skipped_steps": 60, "total_steps": 1000}  # 6%
    assert not {it["id"]: it["passed"] for it in success_checklist(h, too_many)}["nonfinite"]
    assert {it["id"]: it["passed"] for it in success_checklist(h, too_many, skipped_max=0.1)}["nonfinite"]

    empty = {it["id"]: it for it in success_checklist({}, {})}
    assert not any(it["passed"] for it in empty.values())
    assert empty["loss_decreased"]["detail"] == "needs a finite train loss in at least 2 epochs"
    assert empty["artifacts"]["detail"] == "no artifacts checked"


def test_artifacts_present_checks_the_run_folder(tmp_path):
    assert not any(artifacts_present(tmp_path).values())
    for name in ["best_model_epoch3_acc81.25.pth", "last.pth", "best_model.safetensors", "best_model.json",
                 "metrics_history.json"]:
        (tmp_path / name).write_bytes(b"x")
    assert all(artifacts_present(tmp_path).values())
    (tmp_path / "last.pth").unlink()
    assert artifacts_present(tmp_path)["last.pth"] is False

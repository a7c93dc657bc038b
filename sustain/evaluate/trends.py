"""Trend warnings and the Success Criteria Checklist (SPEC §6), from a run's metrics history.

Pure functions over the history the engine keeps (and writes as `metrics_history.json`): a
dict of lists, one entry per epoch, with the keys of SPEC §7. Units: `train_acc`, `val_acc`,
`val_macro_f1` and `skipped` (the share of the epoch's steps that were skipped) are fractions
in 0–1; losses are plain numbers. Percentages exist only in printed text. Missing keys, short
histories and non-finite entries never raise: a rule that cannot be judged simply does not fire
(trend warnings) or fails with a detail saying why (checklist).

The engine calls `trend_warnings(history)` after each epoch, prints the ids it has not printed
before (`format_trend_warning`) and records them in the health record; at the end it prints
`format_checklist(success_checklist(history, run))` and stores the items in `run.json`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import artifacts
from ..utils import finite_float, fmt_metric

# Trend rules (SPEC §6, the seed's warning signs). Each counts epoch-over-epoch changes.
RISING_EPOCHS = 3  # train loss higher than the epoch before, this many epochs in a row
FLAT_EPOCHS = 3  # val accuracy within FLAT_TOLERANCE of the epoch before the window, this many epochs
FLAT_TOLERANCE = 0.001  # ±0.1 percentage point, as a fraction
FLAT_CEILING = 0.999  # a plateau at (nearly) 100% accuracy is success, not a warning
OVERFIT_EPOCHS = 2  # val loss up while train loss down, this many epochs in a row

# Success criteria thresholds (SPEC §6).
VAL_ACC_MIN = (0.50, 0.70)
MACRO_F1_MIN = 0.6
TRAIN_LOSS_MAX = 1.0
VAL_LOSS_MAX = 2.0
SKIPPED_MAX = 0.05

# Files whose presence means "checkpoints and metrics saved" (SPEC §7); values are globs.
REQUIRED_ARTIFACTS: dict[str, str] = {
    "best checkpoint": artifacts.BEST_GLOB,
    artifacts.LAST: artifacts.LAST,
    artifacts.EXPORT_WEIGHTS: artifacts.EXPORT_WEIGHTS,
    artifacts.EXPORT_META: artifacts.EXPORT_META,
    artifacts.HISTORY: artifacts.HISTORY,
}

History = Mapping[str, Sequence[Any]]


# --------------------------------------------------------------------------- helpers


def _series(history: History, key: str) -> list[float | None]:
    return [finite_float(v) for v in history.get(key) or []]


def _epochs(history: History) -> list[int]:
    """The epoch numbers (1-based) for each history entry; falls back to positions."""
    n = max((len(v) for v in history.values() if isinstance(v, Sequence)), default=0)
    raw = list(history.get("epoch") or [])
    return [int(raw[i]) if i < len(raw) and finite_float(raw[i]) is not None else i + 1 for i in range(n)]


def _first_streak_end(flags: Sequence[bool], length: int) -> int | None:
    """Index at which `length` consecutive True flags first complete, or None."""
    run = 0
    for i, flag in enumerate(flags):
        run = run + 1 if flag else 0
        if run >= length:
            return i
    return None


def _rising(values: Sequence[float | None]) -> list[bool]:
    """flags[i]: values[i] is greater than values[i-1] (both finite); flags[0] is False."""
    return [i > 0 and _known(values[i - 1], values[i]) and values[i] > values[i - 1]
            for i in range(len(values))]


def _falling(values: Sequence[float | None]) -> list[bool]:
    """flags[i]: values[i] is lower than values[i-1] (both finite); flags[0] is False."""
    return [i > 0 and _known(values[i - 1], values[i]) and values[i] < values[i - 1]
            for i in range(len(values))]


def _known(*values: float | None) -> bool:
    return all(v is not None for v in values)


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


# --------------------------------------------------------------------------- trend warnings


def trend_warnings(history: History) -> list[dict[str, Any]]:
    """Warning signs found in the history, one per id, at the epoch each first held.

    Returns `[{"id", "epoch", "message"}, ...]` sorted by epoch. Rules (changes are counted
    epoch over epoch, so each needs one epoch more than its streak):

    - `train_loss_rising`: train loss higher than the epoch before for 3 epochs in a row
      (4 epochs of history at least).
    - `val_acc_flat`: val accuracy within ±0.1 pp of the epoch before the window, for 3 epochs
      in a row. A plateau at ≥ 99.9% does not count.
    - `overfitting`: val loss up while train loss went down, for 2 epochs in a row. One epoch
      of that is common noise; two is a trend worth naming (early stopping handles it).

    The function looks at the whole history, so it is idempotent and resume-safe: the caller
    prints the ids it has not printed before.
    """
    epochs = _epochs(history)
    train_loss = _series(history, "train_loss")
    val_loss = _series(history, "val_loss")
    val_acc = _series(history, "val_acc")
    found: list[dict[str, Any]] = []

    end = _first_streak_end(_rising(train_loss), RISING_EPOCHS)
    if end is not None:
        start = end - RISING_EPOCHS
        found.append({
            "id": "train_loss_rising",
            "epoch": epochs[end],
            "message": (f"Train loss rising for {RISING_EPOCHS} epochs in a row "
                        f"({train_loss[start]:.4f} at epoch {epochs[start]} → {train_loss[end]:.4f} "
                        f"at epoch {epochs[end]}): check the learning rate (train.lr)."),
        })

    end = next((i for i in range(FLAT_EPOCHS, len(val_acc))
                if _flat_window(val_acc[i - FLAT_EPOCHS: i + 1])), None)
    if end is not None:
        found.append({
            "id": "val_acc_flat",
            "epoch": epochs[end],
            "message": (f"Val accuracy flat (within ±0.1 pp of {_pct(val_acc[end - FLAT_EPOCHS])}) for "
                        f"{FLAT_EPOCHS} epochs: more epochs may be needed, or the learning rate is too low."),
        })

    val_up, train_down = _rising(val_loss), _falling(train_loss)
    overfit = [val_up[i] and train_down[i] for i in range(min(len(val_up), len(train_down)))]
    end = _first_streak_end(overfit, OVERFIT_EPOCHS)
    if end is not None:
        start = end - OVERFIT_EPOCHS
        found.append({
            "id": "overfitting",
            "epoch": epochs[end],
            "message": (f"Val loss rising ({val_loss[start]:.4f} → {val_loss[end]:.4f}) while train loss "
                        f"falls ({train_loss[start]:.4f} → {train_loss[end]:.4f}) for {OVERFIT_EPOCHS} epochs: "
                        "overfitting; early stopping will handle it."),
        })
    return sorted(found, key=lambda w: w["epoch"])


def _flat_window(window: Sequence[float | None]) -> bool:
    ref, rest = window[0], window[1:]
    if ref is None or ref >= FLAT_CEILING or any(v is None for v in rest):
        return False
    return all(abs(v - ref) <= FLAT_TOLERANCE + 1e-12 for v in rest)


def format_trend_warning(warning: Mapping[str, Any]) -> str:
    """The console line for one warning."""
    return f"⚠️  Epoch {warning['epoch']}: {warning['message']}"


# --------------------------------------------------------------------------- success checklist


def artifacts_present(output_dir: str | Path) -> dict[str, bool]:
    """Which of REQUIRED_ARTIFACTS exist in `output_dir` (read-only; the one I/O helper here)."""
    out = Path(output_dir)
    return {name: any(out.glob(pattern)) for name, pattern in REQUIRED_ARTIFACTS.items()}


def success_checklist(
    history: History,
    run: Mapping[str, Any],
    *,
    skipped_max: float = SKIPPED_MAX,
) -> list[dict[str, Any]]:
    """The Success Criteria Checklist of SPEC §6, computed from the run itself.

    `history`: the metrics history (fractions, see the module docstring).
    `run`: what the history cannot tell:
      - `completed` (bool): the loop ran to its end or stopped early by plan (early stopping),
        not by a crash or a critical-health stop; `stop_reason` (str, optional) is shown;
      - `artifacts` (dict[str, bool]): e.g. `artifacts_present(output_dir)`;
      - `skipped_steps`, `total_steps` (optional ints): the health totals; without them the
        skipped share is the mean of the history's per-epoch `skipped` fractions.
    `skipped_max`: the "frequent NaN/Inf" limit as a fraction (the engine passes
    `cfg.guards.warn_pct / 100`).

    Returns `[{"id", "item", "passed", "detail"}, ...]` in the spec's order. Losses are judged
    at the last epoch; accuracy and macro-F1 at their best epoch.
    """
    return [
        _completed_item(history, run),
        _loss_decreased_item(_series(history, "train_loss")),
        *_best_score_items(history),
        _final_losses_item(history),
        _nonfinite_item(history, run, skipped_max),
        _artifacts_item(run),
    ]


def _item(id_: str, item: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"id": id_, "item": item, "passed": bool(passed), "detail": detail}


def _completed_item(history: History, run: Mapping[str, Any]) -> dict[str, Any]:
    reason = run.get("stop_reason")
    return _item("completed", "Training completed", bool(run.get("completed")),
                 f"{len(_epochs(history))} epoch(s)" + (f"; {reason}" if reason else ""))


def _loss_decreased_item(train_loss: Sequence[float | None]) -> dict[str, Any]:
    first, last = _first_last(train_loss)
    if first is None or last is None or len([v for v in train_loss if v is not None]) < 2:
        return _item("loss_decreased", "Loss decreased", False, "needs a finite train loss in at least 2 epochs")
    return _item("loss_decreased", "Loss decreased", last < first, f"train loss {first:.4f} → {last:.4f}")


def _best_score_items(history: History) -> list[dict[str, Any]]:
    """Val accuracy against each of VAL_ACC_MIN, then macro-F1: each at its best epoch."""
    val_acc = [v for v in _series(history, "val_acc") if v is not None]
    macro_f1 = [v for v in _series(history, "val_macro_f1") if v is not None]
    best_acc = max(val_acc) if val_acc else None
    items = [_item(f"val_acc_{100 * threshold:.0f}", f"Best val accuracy > {100 * threshold:.0f}%",
                   best_acc is not None and best_acc > threshold,
                   f"best {_pct(best_acc)}" if best_acc is not None else "no val accuracy recorded")
             for threshold in VAL_ACC_MIN]
    best_f1 = max(macro_f1) if macro_f1 else None
    items.append(_item("macro_f1", f"Macro-F1 > {MACRO_F1_MIN}", best_f1 is not None and best_f1 > MACRO_F1_MIN,
                       f"best {best_f1:.4f}" if best_f1 is not None else "no macro-F1 recorded"))
    return items


def _final_losses_item(history: History) -> dict[str, Any]:
    train_loss, val_loss = _series(history, "train_loss"), _series(history, "val_loss")
    final_train = train_loss[-1] if train_loss else None
    final_val = val_loss[-1] if val_loss else None
    losses_ok = (final_train is not None and final_train < TRAIN_LOSS_MAX
                 and final_val is not None and final_val < VAL_LOSS_MAX)
    return _item("losses", f"Train loss < {TRAIN_LOSS_MAX} and val loss < {VAL_LOSS_MAX}", losses_ok,
                 f"final train loss {fmt_metric(final_train)}, val loss {fmt_metric(final_val)}")


def _nonfinite_item(history: History, run: Mapping[str, Any], skipped_max: float) -> dict[str, Any]:
    share = _skipped_share(history, run)
    return _item("nonfinite", f"No frequent NaN/Inf (< {100 * skipped_max:g}% skipped)",
                 share is not None and share < skipped_max,
                 f"{_pct(share)} of steps skipped" if share is not None else "no skipped-step record")


def _artifacts_item(run: Mapping[str, Any]) -> dict[str, Any]:
    artifacts = dict(run.get("artifacts") or {})
    missing = [name for name, present in artifacts.items() if not present]
    return _item("artifacts", "Checkpoints and metrics saved", bool(artifacts) and not missing,
                 ("missing: " + ", ".join(missing)) if missing else
                 (", ".join(artifacts) if artifacts else "no artifacts checked"))


def _first_last(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    finite = [v for v in values if v is not None]
    return (finite[0], finite[-1]) if finite else (None, None)


def _skipped_share(history: History, run: Mapping[str, Any]) -> float | None:
    skipped, total = finite_float(run.get("skipped_steps")), finite_float(run.get("total_steps"))
    if skipped is not None and total:
        return skipped / total
    per_epoch = [v for v in _series(history, "skipped") if v is not None]
    return sum(per_epoch) / len(per_epoch) if per_epoch else None


def format_checklist(items: Sequence[Mapping[str, Any]]) -> list[str]:
    """Console lines: the header, one ✓/✗ line per item, and a count."""
    lines = ["Success Criteria Checklist:"]
    for it in items:
        mark = "✓" if it["passed"] else "✗"
        lines.append(f"  {mark} {it['item']}" + (f" ({it['detail']})" if it.get("detail") else ""))
    passed = sum(1 for it in items if it["passed"])
    lines.append(f"  {passed}/{len(items)} criteria met")
    return lines

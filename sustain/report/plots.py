"""The run's plots: training curves, the confusion matrix and per-class F1, as PNG files.

Figure sizes are fixed by the constants below (pixels = inches × DPI), so a
report looks the same on every machine; the confusion matrix grows with the
number of classes so 30 labels stay legible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import atomic_write, finite_float

DPI = 100
CURVES_FIGSIZE = (15.0, 8.0)


def confusion_figsize(num_classes: int) -> tuple[float, float]:
    side = min(max(6.0, 0.38 * num_classes + 3.0), 30.0)
    return side, side


def per_class_figsize(num_classes: int) -> tuple[float, float]:
    return 10.0, min(max(4.0, 0.3 * num_classes + 1.5), 40.0)


def new_figure(figsize: tuple[float, float]):
    # A bare Figure, not pyplot: no global backend switch (a notebook keeps its inline
    # plots) and nothing to close; savefig renders PNG with Agg.
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=DPI)


def tight_layout(fig: Any) -> None:
    """Fit the axes and their labels in the figure, as `Figure.tight_layout` does, once.

    `Figure.tight_layout` leaves a placeholder layout engine on the figure, and
    savefig then lays out every label a second time before it draws. Executing
    the engine gives the same subplot parameters (the same PNG bytes) and leaves
    no engine behind.
    """
    from matplotlib.layout_engine import TightLayoutEngine

    TightLayoutEngine().execute(fig)


def history_series(history: Mapping[str, Any], key: str) -> list[float]:
    """A history column as floats, NaN where an entry is missing or non-finite (a gap in the plot)."""
    return [np.nan if (v := finite_float(x)) is None else v for x in history.get(key) or []]


def _save(fig: Any, path: Path) -> Path:
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=DPI))
    return path


HEALTH_COLOURS = {"healthy": "tab:green", "warning": "tab:orange", "critical": "tab:red"}


def plot_training_curves(history: Mapping[str, Any], path: str | Path, warn_pct: float | None = None) -> Path:
    """Loss, accuracy, macro-F1, LR and skipped steps per epoch (fractions shown as %)."""
    return _save(training_curves_figure(history, warn_pct), Path(path))


def _lr_panel(ax: Any, epochs: list[float], lr: list[float]) -> None:
    """A linear axis, so an LR of 0 (a schedule's last epoch) is drawn and marked, not dropped."""
    ax.plot(epochs[: len(lr)], lr, marker="o", label="lr")
    for x, y in zip(epochs, lr, strict=False):
        if y == 0:
            ax.annotate("0", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_ylim(bottom=0)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set(title="Learning rate (end of epoch)", xlabel="epoch")


def _skipped_panel(ax: Any, history: Mapping[str, Any], epochs: list[float], warn_pct: float | None) -> None:
    skipped = [0.0 if np.isnan(v) else 100 * v for v in history_series(history, "skipped")]
    if not any(skipped):  # an empty frame reads as a broken plot: say it in one line instead
        ax.axis("off")
        ax.text(0.5, 0.5, f"No steps skipped\n(all {len(skipped)} epoch(s))", ha="center", va="center",
                transform=ax.transAxes, fontsize=12)
        ax.set_title("Skipped steps")
        return
    # Each bar wears the verdict the engine gave that epoch under the run's own guard thresholds.
    verdicts = list(history.get("health") or [])
    colours = [HEALTH_COLOURS.get(verdicts[i] if i < len(verdicts) else "", "tab:gray") for i in range(len(skipped))]
    ax.bar(epochs[: len(skipped)], skipped, color=colours)
    if warn_pct is not None:
        ax.axhline(warn_pct, color="tab:orange", linestyle="--", linewidth=1)
    ax.set(title="Skipped steps (%)", xlabel="epoch", ylim=(0, max([25.0, *skipped])))


def training_curves_figure(history: Mapping[str, Any], warn_pct: float | None = None) -> Any:
    """The training curves' figure (a matplotlib Figure, not yet saved)."""
    n = max((len(v) for v in history.values() if isinstance(v, list)), default=0)
    epochs = history_series(history, "epoch") or [float(i + 1) for i in range(n)]
    fig = new_figure(CURVES_FIGSIZE)
    axes = fig.subplots(2, 3)

    def line(ax, key: str, label: str, scale: float = 1.0) -> None:
        values = history_series(history, key)
        if values:
            ax.plot(epochs[: len(values)], [v * scale for v in values], marker="o", label=label)

    ax = axes[0, 0]
    line(ax, "train_loss", "train")
    line(ax, "val_loss", "val")
    ax.set(title="Loss", xlabel="epoch")
    ax = axes[0, 1]
    line(ax, "train_acc", "train", 100)
    line(ax, "val_acc", "val", 100)
    ax.set(title="Accuracy (%)", xlabel="epoch")
    ax = axes[0, 2]
    line(ax, "val_macro_f1", "val")
    ax.set(title="Val macro-F1", xlabel="epoch", ylim=(0, 1))
    _lr_panel(axes[1, 0], epochs, history_series(history, "lr"))
    _skipped_panel(axes[1, 1], history, epochs, warn_pct)
    ax = axes[1, 2]
    line(ax, "images_per_second", "images/s")
    ax.set(title="Throughput (images/s)", xlabel="epoch")

    from matplotlib.ticker import MaxNLocator

    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0] and ax is not axes[1, 0] and ax is not axes[1, 2]:
            ax.legend()
        if not ax.has_data() and ax.axison:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.suptitle("Training curves")
    tight_layout(fig)
    return fig


def normalise_rows(confusion: np.ndarray) -> np.ndarray:
    """Each row divided by its total (recall per true class); a class without samples stays 0."""
    c = np.asarray(confusion, dtype=np.float64)
    totals = c.sum(axis=1, keepdims=True)
    return np.divide(c, totals, out=np.zeros_like(c), where=totals > 0)


def plot_confusion_matrix(confusion: np.ndarray, classes: Sequence[str], path: str | Path,
                          title: str = "Confusion matrix (val, best weights)") -> Path:
    """Row-normalised heat map; true classes on rows; cells ≥ 1% annotated."""
    norm = normalise_rows(confusion)
    k = len(classes)
    fig = new_figure(confusion_figsize(k))
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    font = 9 if k <= 15 else 7
    ax.set_xticks(range(k), labels=classes, rotation=90, fontsize=font)
    ax.set_yticks(range(k), labels=[f"{c} ({int(n)})" for c, n in zip(classes, np.asarray(confusion).sum(axis=1), strict=True)],
                  fontsize=font)
    ax.set(xlabel="predicted", ylabel="true (support)", title=title)
    for i, j in zip(*np.nonzero(norm >= 0.01), strict=True):
        ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=font - 1,
                color="white" if norm[i, j] > 0.5 else "black")
    tight_layout(fig)
    return _save(fig, Path(path))


def plot_per_class_f1(f1: Sequence[float], support: Sequence[int | None], classes: Sequence[str],
                      path: str | Path) -> Path:
    """Horizontal bars, worst at the top; classes without val samples drawn grey and labelled."""
    from matplotlib import colormaps

    k = len(classes)
    order = sorted(range(k), key=lambda i: (support[i] == 0, f1[i], i), reverse=True)
    fig = new_figure(per_class_figsize(k))
    ax = fig.subplots()
    colours = ["lightgrey" if support[i] == 0 else colormaps["RdYlGn"](f1[i]) for i in order]
    ax.barh(range(k), [f1[i] for i in order], color=colours)
    labels = [f"{classes[i]} (n={support[i]})" if support[i] is not None else classes[i] for i in order]
    ax.set_yticks(range(k), labels=labels, fontsize=8 if k > 15 else 10)
    for y, i in enumerate(order):
        text = "no val samples" if support[i] == 0 else f"{f1[i]:.2f}"
        ax.text(min(f1[i], 1.0) + 0.01, y, text, va="center", fontsize=7)
    ax.set(xlim=(0, 1.12), xlabel="F1 (val, best weights)", title="Per-class F1")
    ax.grid(axis="x", alpha=0.3)
    tight_layout(fig)
    return _save(fig, Path(path))


CALIBRATION_FIGSIZE = (12.0, 5.0)


def plot_calibration(reliability: Mapping[str, Mapping[str, Any]], curves: Mapping[str, Mapping[str, Any]],
                     threshold: float | None, path: str | Path, split: str = "test",
                     target: float | None = None) -> Path:
    """Left: the reliability diagram of `split` before and after temperature scaling (accuracy
    against mean confidence per bin; the diagonal is perfect calibration). Right: accepted
    accuracy against coverage for each split in `curves` (in-domain and held-out side by side),
    with the point where the chosen threshold lands marked and the target as a dashed line."""
    fig = new_figure(CALIBRATION_FIGSIZE)
    left, right = fig.subplots(1, 2)
    left.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for label, rel in reliability.items():
        pts = [(c, a) for c, a in zip(rel["confidence"], rel["accuracy"], strict=True) if c is not None]
        if pts:
            left.plot(*zip(*pts, strict=True), marker="o", label=label)
    left.set(title=f"Reliability ({split})", xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
    for name, curve in curves.items():
        if not curve["coverage"]:
            continue
        line = right.plot(curve["coverage"], curve["accuracy"], label=name)[0]
        if threshold is not None:
            accepted = [i for i, c in enumerate(curve["confidence"]) if c >= threshold]
            if accepted:
                i = accepted[-1]
                right.plot(curve["coverage"][i], curve["accuracy"][i], marker="D", color=line.get_color(),
                           markersize=8)
    if threshold is not None:
        right.plot([], [], marker="D", color="black", linestyle="", label=f"threshold {threshold:.3f}")
    if target is not None:
        right.axhline(target, color="tab:red", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    right.set(title="Risk–coverage (accept the most confident first)", xlabel="coverage (share accepted)",
              ylabel="accuracy of the accepted", xlim=(0, 1.02))
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    tight_layout(fig)
    return _save(fig, Path(path))

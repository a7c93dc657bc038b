"""Per-epoch and final classification metrics (pure: numpy and scikit-learn).

Conventions, shared by training, `sustain evaluate` and the report:

- Inputs are class probabilities (or logits: only the argmax matters for
  everything but calibration) ``[N, C]`` and multi-hot targets ``[N, C]``.
- A row with exactly one positive is a *fine* sample; a row with several is a
  *set* sample (a coarse label such as PLASTIC). Fine metrics (``acc``,
  ``macro_f1``, ``per_class_f1``, ``support``, ``confusion``) count fine
  samples only. A set sample counts towards ``set_acc``: correct when the
  argmax is one of the set's classes. Rows with no positive are ignored.
- Accuracies are fractions in [0, 1], not percentages.
- ``macro_f1`` is scikit-learn's default macro average: over the classes that
  occur in y_true or y_pred. A class that was never in val and never predicted
  does not drag the mean to 0; a class predicted but absent scores 0 (its
  false positives count). ``per_class_f1`` and ``confusion`` still cover all C
  classes in taxonomy order (``zero_division=0``).
- With no fine samples, ``acc`` and ``macro_f1`` are 0.0; with no set samples
  ``set_acc`` is None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score

from ..taxonomy import Taxonomy

WORST_K = 5
ECE_BINS = 15


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def split_fine_and_set(targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks over samples: fine (one positive) and set (several positives)."""
    t = _to_numpy(targets) > 0.5
    positives = t.sum(axis=1)
    return positives == 1, positives > 1


def _set_hits(pred: np.ndarray, t: np.ndarray, set_mask: np.ndarray) -> np.ndarray:
    """For set samples: whether the argmax is one of the set's classes."""
    rows = np.flatnonzero(set_mask)
    return t[rows, pred[rows]]


def epoch_metrics(
    probs: Any,
    targets: Any,
    taxonomy: Taxonomy,
    source_ids: Any = None,
    sources: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The per-epoch validation metrics of SPEC §6 (see the module docstring).

    Returns a dict with ``acc``, ``macro_f1``, ``per_class_f1`` (list of C),
    ``support`` (list of C, fine samples per true class), ``set_acc``,
    ``n_fine``, ``n_set``, ``worst`` (up to 5 ``(class, f1, support)`` tuples,
    lowest F1 first, only classes with support > 0, named by taxonomy index)
    and ``confusion`` (C×C int64, rows true, columns predicted). With
    ``source_ids`` it also holds ``per_source`` (see `per_source_accuracy`).
    """
    p = _to_numpy(probs)
    t = _to_numpy(targets) > 0.5
    num_classes = taxonomy.num_classes
    if p.ndim != 2 or p.shape[1] != num_classes or t.shape != p.shape:
        raise ValueError(
            f"expected probs and targets of shape [N, {num_classes}], got {p.shape} and {t.shape}"
        )
    pred = p.argmax(axis=1)
    fine, is_set = split_fine_and_set(t)
    y_true = t[fine].argmax(axis=1)
    y_pred = pred[fine]
    labels = list(range(num_classes))

    n_fine = int(fine.sum())
    if n_fine:
        acc = float((y_true == y_pred).mean())
        macro_f1 = float(f1_score(y_true, y_pred, average="macro", zero_division=0))
        per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
        confusion = confusion_matrix(y_true, y_pred, labels=labels).astype(np.int64)
    else:
        acc = macro_f1 = 0.0
        per_class = np.zeros(num_classes)
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    support = np.bincount(y_true, minlength=num_classes)

    n_set = int(is_set.sum())
    set_acc = float(_set_hits(pred, t, is_set).mean()) if n_set else None

    out: dict[str, Any] = {
        "acc": acc,
        "macro_f1": macro_f1,
        "per_class_f1": [float(f) for f in per_class],
        "support": [int(s) for s in support],
        "set_acc": set_acc,
        "n_fine": n_fine,
        "n_set": n_set,
        "worst": worst_classes(per_class, support, taxonomy),
        "confusion": confusion,
    }
    if source_ids is not None:
        out["per_source"] = per_source_accuracy(p, t, source_ids, sources)
    return out


def worst_classes(
    per_class_f1: Sequence[float], support: Sequence[int], taxonomy: Taxonomy, k: int = WORST_K
) -> list[tuple[str, float, int]]:
    """The k lowest-F1 classes that have val samples, as (name, f1, support).

    Ties keep taxonomy order. Names come from the taxonomy index, so the name
    always belongs to the F1 printed next to it.
    """
    candidates = [i for i in range(taxonomy.num_classes) if support[i] > 0]
    candidates.sort(key=lambda i: (per_class_f1[i], i))
    return [(taxonomy.classes[i], float(per_class_f1[i]), int(support[i])) for i in candidates[:k]]


def format_per_class(m: dict[str, Any], taxonomy: Taxonomy) -> list[str]:
    """The SPEC §6 per-class lines, ready to log one by one."""
    lines = ["📊 Per-Class Performance:", f"  Macro F1: {m['macro_f1']:.4f}", "  Worst 5 classes:"]
    lines += [f"    {name}: F1={f1:.4f}, Support={n}" for name, f1, n in m["worst"]]
    return lines


# --------------------------------------------------------------------------- final-report extras


def per_source_accuracy(
    probs: Any, targets: Any, source_ids: Any, sources: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Accuracy per data source: ``{name: {acc, n_fine, set_acc, n_set}}``.

    ``acc`` is None for a source with no fine samples in this split (and
    ``set_acc`` likewise), so it is never mistaken for 0%.
    """
    p = _to_numpy(probs)
    t = _to_numpy(targets) > 0.5
    ids = _to_numpy(source_ids).astype(np.int64)
    pred = p.argmax(axis=1)
    fine, is_set = split_fine_and_set(t)
    fine_hit = np.zeros(len(p), dtype=bool)
    fine_hit[fine] = t[fine].argmax(axis=1) == pred[fine]
    set_hit = np.zeros(len(p), dtype=bool)
    set_hit[is_set] = _set_hits(pred, t, is_set)

    out: dict[str, dict[str, Any]] = {}
    for sid in sorted(set(ids.tolist())):
        name = sources[sid] if sources is not None and 0 <= sid < len(sources) else f"source_{sid}"
        here = ids == sid
        nf, ns = int((here & fine).sum()), int((here & is_set).sum())
        out[name] = {
            "acc": float(fine_hit[here & fine].mean()) if nf else None,
            "n_fine": nf,
            "set_acc": float(set_hit[here & is_set].mean()) if ns else None,
            "n_set": ns,
        }
    return out


def bin_accuracy(probs: Any, targets: Any, taxonomy: Taxonomy) -> dict[str, Any]:
    """Disposal-bin accuracy (SPEC §3): is the predicted class in the true class's bin?

    A fine sample's true bin is its class's bin. A set sample counts only when
    all of its set's classes share one bin (e.g. ORGANIC → compost); a set that
    spans bins (PLASTIC) has no single true bin and is left out. Classes
    without a bin are left out. Returns ``{acc, n, per_bin: {bin: {acc, n}}}``,
    or ``{acc: None, n: 0, per_bin: {}}`` for a taxonomy without bins.
    """
    if not taxonomy.bins:
        return {"acc": None, "n": 0, "per_bin": {}}
    p = _to_numpy(probs)
    t = _to_numpy(targets) > 0.5
    class_bin = [taxonomy.bin_of(c) for c in taxonomy.classes]
    pred_bin = [class_bin[i] for i in p.argmax(axis=1)]

    hits: dict[str, list[bool]] = {b: [] for b in taxonomy.bins}
    for row, predicted in zip(t, pred_bin, strict=True):
        true_bins = {class_bin[i] for i in np.flatnonzero(row)}
        if len(true_bins) != 1 or None in true_bins:
            continue
        (true_bin,) = true_bins
        hits[true_bin].append(predicted == true_bin)

    per_bin = {b: {"acc": float(np.mean(h)) if h else None, "n": len(h)} for b, h in hits.items()}
    n = sum(len(h) for h in hits.values())
    acc = float(sum(sum(h) for h in hits.values()) / n) if n else None
    return {"acc": acc, "n": n, "per_bin": per_bin}


def topk_accuracy(probs: Any, targets: Any, k: int = 5) -> float | None:
    """Fine samples whose true class is among the k most probable (k capped at C)."""
    p = _to_numpy(probs)
    t = _to_numpy(targets) > 0.5
    fine, _ = split_fine_and_set(t)
    if not fine.any():
        return None
    k = min(k, p.shape[1])
    top = np.argpartition(-p[fine], k - 1, axis=1)[:, :k]
    truth = t[fine].argmax(axis=1)
    return float((top == truth[:, None]).any(axis=1).mean())


def expected_calibration_error(probs: Any, targets: Any, n_bins: int = ECE_BINS) -> float | None:
    """ECE over fine samples: |accuracy − confidence| per equal-width confidence bin,
    weighted by the bin's share of samples. ``probs`` must be probabilities."""
    p = _to_numpy(probs)
    t = _to_numpy(targets) > 0.5
    fine, _ = split_fine_and_set(t)
    if not fine.any():
        return None
    conf = p[fine].max(axis=1)
    correct = p[fine].argmax(axis=1) == t[fine].argmax(axis=1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        here = which == b
        if here.any():
            ece += here.mean() * abs(correct[here].mean() - conf[here].mean())
    return float(ece)


def top_confusions(
    confusion: np.ndarray, classes: Sequence[str], k: int = 10
) -> list[tuple[str, str, int]]:
    """The k largest off-diagonal cells as (true class, predicted class, count)."""
    c = np.asarray(confusion).copy()
    np.fill_diagonal(c, 0)
    order = np.argsort(-c, axis=None, kind="stable")[:k]
    pairs = [np.unravel_index(i, c.shape) for i in order]
    return [(classes[i], classes[j], int(c[i, j])) for i, j in pairs if c[i, j] > 0]


def final_metrics(
    probs: Any,
    targets: Any,
    taxonomy: Taxonomy,
    source_ids: Any = None,
    sources: Sequence[str] | None = None,
) -> dict[str, Any]:
    """`epoch_metrics` plus the final-report extras: ``per_source``, ``bin``
    (see `bin_accuracy`), ``top5_acc`` and ``ece``. ``probs`` must be probabilities."""
    out = epoch_metrics(probs, targets, taxonomy, source_ids, sources)
    out.setdefault("per_source", {})
    out["bin"] = bin_accuracy(probs, targets, taxonomy)
    out["top5_acc"] = topk_accuracy(probs, targets, k=5)
    out["ece"] = expected_calibration_error(probs, targets)
    return out

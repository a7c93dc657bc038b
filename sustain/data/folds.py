"""Cross-validation folds (docs/evaluation.md, "Cross-validation"): pure split decisions, and the
two small files that carry them.

- `kfold_plan`: grouped, class-stratified k-fold over the whole lake (train, val and test pooled).
  The unit is the near-duplicate group ingestion builds (`ManifestRow.group`), so no group spans
  two folds; scikit-learn's `StratifiedGroupKFold` does exactly this.
- `source_plan`: leave-one-source-out. Images of the training sources that share a near-duplicate
  group with a held-out image are removed from that fold (counted), and held-out images of a class
  no training source has are excluded from its score (counted per class).

In each fold a val part for early stopping is carved from the training pool with the same grouping
and stratification (`StratifiedGroupKFold` again: its first fold of round(1 / val fraction)). A fold reaches an ordinary training run as an assignment
file (`content_hash,split` per image, `write_assignment`), named by `data.split.assignment`;
ingestion then takes each image's split from it instead of drawing one (`assigned_splits`).
"""

from __future__ import annotations

import csv
import io
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, UsageError
from ..utils import atomic_write_text
from .manifest import ManifestRow
from .split import SPLITS

EXCLUDED = "excluded"  # an image a fold neither trains, validates nor scores on
ASSIGNMENT_COLUMNS = ("content_hash", "split")
FOLDS_COLUMNS = ("path", "source", "group", "fold", "label")
MIN_SOURCE_IMAGES = 20  # fine-labelled images a source needs to be held out


@dataclass(frozen=True)
class Fold:
    """One fold: each lake row's split in it, and what it left out and why."""

    index: int
    name: str  # the run folder's name: fold_<i>, or source_<name>
    held_out: int | str  # the fold index, or the held-out source
    splits: tuple[str, ...]  # per lake row: train | val | test | excluded
    near_duplicates_removed: int = 0  # training-source images near-duplicating a held-out image
    unseen_class_images: dict[str, int] = field(default_factory=dict)  # held-out images of untrained classes

    def count(self, split: str) -> int:
        return self.splits.count(split)


@dataclass(frozen=True)
class FoldPlan:
    scheme: str  # "kfold" | "source"
    folds: tuple[Fold, ...]
    skipped_sources: dict[str, dict] = field(default_factory=dict)  # source -> fine_images, reason

    def test_fold(self) -> np.ndarray:
        """Per lake row: the fold whose test part scores it, or -1."""
        out = np.full(len(self.folds[0].splits) if self.folds else 0, -1, dtype=np.int64)
        for fold in self.folds:
            out[np.array(fold.splits) == "test"] = fold.index
        return out


def val_fraction(train: float, val: float) -> float:
    """The share of a fold's training pool that becomes its val part: the config's val : train ratio."""
    if val <= 0:
        raise ConfigError("data.split.val", "crossval carves a val part for early stopping from each fold's training "
                                            "pool: set data.split.val above 0 (e.g. 0.1)")
    return val / (train + val)


def _carve_val(rows: Sequence[ManifestRow], pool: np.ndarray, splits: list[str], fraction: float, seed: int) -> None:
    """Split the rows at `pool` into train and val in place: the first of round(1 / fraction) grouped,
    stratified folds of the pool is val, so val is never empty while the pool has two groups."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.array([rows[i].group for i in pool])
    labels = [rows[i].label for i in pool]
    # scikit-learn needs a label with at least n_splits images: a tiny lake gets a larger val part
    n_splits = min(max(2, round(1 / fraction)), len(np.unique(groups)), max(Counter(labels).values()))
    if n_splits < 2:
        raise UsageError(f"a fold's training pool holds {len(pool)} images in one near-duplicate group: "
                         "nothing is left to validate on", "add images or sources")
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed % 2**32)
    with warnings.catch_warnings():  # a class with fewer groups than n_splits just gets no val image
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        _, val = next(cv.split(np.zeros(len(pool)), labels, groups))
    for i in pool:
        splits[i] = "train"
    for i in pool[val]:
        splits[i] = "val"


def kfold_plan(rows: Sequence[ManifestRow], k: int, seed: int, fraction: float) -> FoldPlan:
    """K folds of whole near-duplicate groups, stratified by label (sets and `a|b` labels are strata too)."""
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise UsageError(f"--folds {k}: cross-validation needs at least 2 folds", "use --folds 5 (the default)")
    groups = np.array([r.group for r in rows])
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise UsageError(f"--folds {k}: the lake has only {n_groups} near-duplicate groups ({len(rows)} images)",
                         f"use --folds {max(2, n_groups)} or fewer, or add images")
    labels = np.array([r.label for r in rows])
    largest = max(Counter(labels.tolist()).values())
    if largest < k:  # scikit-learn stratifies only with k members in some class, else raises ValueError
        raise UsageError(f"--folds {k}: the lake's largest class has only {largest} images",
                         f"use --folds {max(2, largest)} or fewer, or add images")
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed % 2**32)
    folds = []
    for i, (pool, test) in enumerate(cv.split(np.zeros(len(rows)), labels, groups)):
        splits = ["test"] * len(rows)
        _carve_val(rows, pool, splits, fraction, seed)
        folds.append(Fold(index=i, name=f"fold_{i}", held_out=i, splits=tuple(splits)))
        if not len(test):
            raise UsageError(f"--folds {k}: fold {i} would score no image", "use fewer folds")
    return FoldPlan("kfold", tuple(folds))


def source_plan(rows: Sequence[ManifestRow], sources: Sequence[str], seed: int, fraction: float,
                min_images: int = MIN_SOURCE_IMAGES) -> FoldPlan:
    """One fold per source with at least `min_images` fine-labelled images, held out in turn. A source
    none of whose images the other sources could teach (every class untrained) is skipped too, and said why."""
    fine = Counter(r.source for r in rows if len(r.targets) == 1)
    if len(set(r.source for r in rows)) < 2:
        raise UsageError("--by source needs at least two sources with images", "enable more sources in data.sources")
    folds, skipped = [], {}
    for source in sources:
        if fine[source] < min_images:
            skipped[source] = {"fine_images": fine[source], "reason": f"fewer than {min_images} fine-labelled images"}
            continue
        fold = _source_fold(rows, len(folds), source, seed, fraction)
        if fold.count("test") == 0 or fold.count("train") == 0:
            skipped[source] = {"fine_images": fine[source], "reason": "no class of its images has a fine-labelled "
                                                                      "image in the other sources"}
            continue
        folds.append(fold)
    if not folds:
        raise UsageError(f"--by source: no source can be held out: {skipped}",
                         "lower --min-images, or add sources that share classes")
    return FoldPlan("source", tuple(folds), skipped)


def _source_fold(rows: Sequence[ManifestRow], index: int, source: str, seed: int, fraction: float) -> Fold:
    held_groups = {r.group for r in rows if r.source == source}
    splits = [EXCLUDED] * len(rows)
    pool = np.array([i for i, r in enumerate(rows) if r.source != source and r.group not in held_groups], dtype=int)
    removed = sum(1 for r in rows if r.source != source and r.group in held_groups)
    trained = {t for i in pool for t in rows[i].targets if len(rows[i].targets) == 1}
    unseen: Counter = Counter()
    for i, r in enumerate(rows):
        if r.source != source:
            continue
        if any(t in trained for t in r.targets):  # a set label counts when one of its classes was trained
            splits[i] = "test"
        else:
            unseen[r.label] += 1
    if len(pool):
        _carve_val(rows, pool, splits, fraction, seed)
    return Fold(index=index, name=f"source_{_safe(source)}", held_out=source, splits=tuple(splits),
                near_duplicates_removed=removed, unseen_class_images=dict(sorted(unseen.items())))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# --------------------------------------------------------------------------- files


def folds_text(rows: Sequence[ManifestRow], fold_of: np.ndarray) -> str:
    """folds.csv: one row per image (path as in manifest.csv), its fold ('' when no fold scores it)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FOLDS_COLUMNS)
    writer.writerows((r.path, r.source, r.group, int(f) if f >= 0 else "", r.label)
                     for r, f in zip(rows, fold_of, strict=True))
    return buffer.getvalue()


def write_assignment(path: str | Path, rows: Sequence[ManifestRow], fold: Fold) -> Path:
    """The file `data.split.assignment` names: each image's split in this fold, by content hash."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ASSIGNMENT_COLUMNS)
    writer.writerows((r.content_hash, s) for r, s in zip(rows, fold.splits, strict=True))
    return atomic_write_text(Path(path), buffer.getvalue())


def assigned_splits(path: str | Path, content_hashes: Sequence[str]) -> list[str]:
    """Each image's split from an assignment file; ConfigError when the file and the lake disagree."""
    path = Path(path).expanduser()
    key = "data.split.assignment"
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != ASSIGNMENT_COLUMNS:
                raise ConfigError(key, f"{path} is not a split assignment (columns {','.join(ASSIGNMENT_COLUMNS)})")
            table = {line["content_hash"]: line["split"] for line in reader}
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc}") from None
    bad = sorted({s for s in table.values() if s not in (*SPLITS, EXCLUDED)})
    if bad:
        raise ConfigError(key, f"{path} holds unknown splits {bad}; use {', '.join((*SPLITS, EXCLUDED))}")
    missing = sum(1 for h in content_hashes if h not in table)
    if missing:
        raise ConfigError(key, f"{missing} of the lake's {len(content_hashes)} images are not in {path}: the lake "
                               "changed since the folds were planned; rerun `sustain crossval` without --resume")
    return [table[h] for h in content_hashes]

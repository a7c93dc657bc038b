"""The error gallery: which images of a run a person should look at, and their thumbnails.

Everything here works from the per-sample prediction store that the final
evaluation writes (``predictions_<split>.npz``: path, source, given label,
probabilities and multi-hot targets per image), so `sustain report` rebuilds
the gallery without the model. The selections are pure functions of that
store:

- `top_mistakes`: the most confident wrong predictions (fastai's ``plot_top_losses``);
- `confused_pairs`: the largest off-diagonal cells, each with its most confident examples;
- `suspect_labels`: the likely label errors among the held-out images (val and
  test pooled), found by `label_issues.find_label_issues` (cleanlab) on the
  fine-labelled ones and by the fixed rule on the set-labelled ones, ranked;
- `per_source`: accuracy and worst confusions per data source, with a flag on a
  source whose accuracy sits well below the others' (a mislabelled dataset).

`Thumbnails` turns the selected files into small embedded JPEGs within a byte
budget; `sustain.report.gallery_html` renders them.
"""

from __future__ import annotations

import base64
import csv
import io
import logging
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import PREDICTIONS, SUSPECTS_CSV  # noqa: F401  (SUSPECTS_CSV re-exported)
from ..utils import atomic_write, atomic_write_text
from .label_issues import find_label_issues, fixed_rule

log = logging.getLogger("sustain.evaluate.gallery")

TOP_MISTAKES = 24  # per split
PAIRS, PER_PAIR = 6, 6
SUSPECTS_SHOWN = 24
SOURCE_GAP = 0.10  # a source this far below the others' accuracy is flagged
SOURCE_MIN_IMAGES = 10
THUMB_PX = 128
THUMB_QUALITY = 70
THUMB_BUDGET_BYTES = 5_000_000  # all embedded thumbnails of one report together
_STORE_KEYS = ("split", "classes", "paths", "sources", "labels", "probs", "targets", "in_sample")


def predictions_file(split: str) -> str:
    return PREDICTIONS.format(split=split)


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class SamplePredictions:
    """One split's final-evaluation outputs, one row per scored image, in loader order."""

    split: str
    classes: tuple[str, ...]
    paths: np.ndarray  # str [N]
    sources: np.ndarray  # str [N]
    labels: np.ndarray  # str [N]: the given label, a class or a set name
    probs: np.ndarray  # float32 [N, C]
    targets: np.ndarray  # bool [N, C]
    in_sample: bool = False  # scored by a model that trained on these labels (the train split)

    def __post_init__(self) -> None:
        n, c = len(self.paths), len(self.classes)
        for name in ("sources", "labels"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} paths")
        for name in ("probs", "targets"):
            if getattr(self, name).shape != (n, c):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {(n, c)}")

    @property
    def fine(self) -> np.ndarray:
        return self.targets.sum(axis=1) == 1

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def given_mass(self) -> np.ndarray:
        """Probability on the given label: its class, or the sum over its set."""
        return np.where(self.targets, self.probs, 0.0).sum(axis=1)


def save_predictions(path: str | Path, sp: SamplePredictions, extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write the store as one compressed .npz (strings as unicode arrays: loads without pickle);
    `extra` arrays (one entry per image, e.g. crossval's `fold`) are stored beside its keys."""
    arrays = {"split": np.array(sp.split), "classes": np.array(sp.classes, dtype=str),
              "paths": np.asarray(sp.paths, dtype=str), "sources": np.asarray(sp.sources, dtype=str),
              "labels": np.asarray(sp.labels, dtype=str), "probs": np.asarray(sp.probs, dtype=np.float32),
              "targets": np.asarray(sp.targets, dtype=bool), "in_sample": np.array(sp.in_sample), **(extra or {})}
    return atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))


def load_predictions(path: str | Path) -> SamplePredictions:
    """Read a store written by `save_predictions`; ValueError names the file and what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _STORE_KEYS if k not in z.files]
            if missing:
                raise ValueError(f"{path} lacks {missing}: rewrite it with `sustain evaluate`")
            d = {k: z[k] for k in _STORE_KEYS}
        return SamplePredictions(split=str(d["split"]), classes=tuple(str(c) for c in d["classes"]),
                                 paths=d["paths"], sources=d["sources"], labels=d["labels"],
                                 probs=d["probs"].astype(np.float32), targets=d["targets"].astype(bool),
                                 in_sample=bool(d["in_sample"]))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} could not be read: {exc}") from None


# --------------------------------------------------------------------------- selections


@dataclass(frozen=True)
class Sample:
    """One image as the gallery shows it."""

    split: str
    path: str
    source: str
    given: str
    predicted: str
    p_predicted: float
    p_given: float  # probability on the given class, or mass inside the given set
    top3: tuple[tuple[str, float], ...]
    in_sample: bool = False


def sample(sp: SamplePredictions, i: int) -> Sample:
    p = sp.probs[i]
    top = np.argsort(-p, kind="stable")[:3]
    pred = int(top[0])
    return Sample(split=sp.split, path=str(sp.paths[i]), source=str(sp.sources[i]), given=str(sp.labels[i]),
                  predicted=sp.classes[pred], p_predicted=float(p[pred]), p_given=float(p[sp.targets[i]].sum()),
                  top3=tuple((sp.classes[int(j)], float(p[j])) for j in top), in_sample=sp.in_sample)


def _ranked(indices: np.ndarray, keys: Sequence[np.ndarray]) -> np.ndarray:
    """`indices` sorted by the keys (last key primary, ascending), ties by index: deterministic."""
    return indices[np.lexsort([indices, *(k[indices] for k in keys)])]


def top_mistakes(sp: SamplePredictions, n: int = TOP_MISTAKES) -> list[Sample]:
    """Fine-labelled images predicted wrong, most confident first."""
    pred = sp.predicted
    wrong = np.flatnonzero(sp.fine & ~sp.targets[np.arange(len(pred)), pred])
    conf = sp.probs.max(axis=1)
    return [sample(sp, int(i)) for i in _ranked(wrong, [-conf])[:n]]


def confused_pairs(sp: SamplePredictions, k: int = PAIRS,
                   per_pair: int = PER_PAIR) -> list[tuple[str, str, int, list[Sample]]]:
    """The k largest (true, predicted) off-diagonal cells over fine images, each with
    its `per_pair` most confident examples: ``(true, predicted, count, samples)``."""
    fine = np.flatnonzero(sp.fine)
    true, pred = sp.targets[fine].argmax(axis=1), sp.predicted[fine]
    c = len(sp.classes)
    counts = np.bincount(true * c + pred, minlength=c * c).reshape(c, c)
    np.fill_diagonal(counts, 0)
    conf = sp.probs.max(axis=1)
    out = []
    for cell in np.argsort(-counts, axis=None, kind="stable")[:k]:
        t, p = divmod(int(cell), c)
        if counts[t, p] == 0:
            break
        members = fine[(true == t) & (pred == p)]
        out.append((sp.classes[t], sp.classes[p], int(counts[t, p]),
                    [sample(sp, int(i)) for i in _ranked(members, [-conf])[:per_pair]]))
    return out


def _flag(stores: Sequence[SamplePredictions], members: list[int], masks: list[np.ndarray],
          method: str | None) -> None:
    """Mark in `masks` the suspects of the stores `members`, pooled into one finder call."""
    probs = np.concatenate([stores[k].probs for k in members])
    targets = np.concatenate([stores[k].targets for k in members])
    where = [(k, i) for k in members for i in range(len(stores[k].paths))]
    n_given = targets.sum(axis=1)
    fine = np.flatnonzero(n_given == 1)
    hits = [int(fine[i]) for i, _ in find_label_issues(probs[fine], targets[fine].argmax(axis=1), method=method)]
    mass, outside = np.where(targets, probs, 0.0).sum(axis=1), np.where(targets, 0.0, probs).max(axis=1)
    hits += np.flatnonzero((n_given > 1) & fixed_rule(mass, outside)).tolist()
    for j in hits:
        k, i = where[j]
        masks[k][i] = True


def suspect_masks(stores: Sequence[SamplePredictions], method: str | None = None) -> list[np.ndarray]:
    """Per store, a bool mask of its suspect labels. The held-out stores (val, test) go to the finder
    together, the in-sample ones (eval_train) apart: cleanlab sets its per-class thresholds from all
    the images it is given, and in-sample scores must not shift the held-out ones. Fine-labelled
    images: `find_label_issues(method)`; set-labelled ones (no single given class for cleanlab):
    the fixed rule on the mass inside the set."""
    masks = [np.zeros(len(sp.paths), dtype=bool) for sp in stores]
    for in_sample in (False, True):
        members = [k for k, sp in enumerate(stores) if sp.in_sample == in_sample]
        if members:
            _flag(stores, members, masks, method)
    return masks


def suspect_labels(stores: Sequence[SamplePredictions], method: str | None = None,
                   masks: Sequence[np.ndarray] | None = None) -> list[Sample]:
    """The suspects of all `stores` (see `suspect_masks`): held-out first, then the least probable
    given label first."""
    masks = suspect_masks(stores, method) if masks is None else masks
    found = [(sample(sp, int(i)), k, int(i)) for k, (sp, m) in enumerate(zip(stores, masks, strict=True))
             for i in np.flatnonzero(m)]
    found.sort(key=lambda t: (t[0].in_sample, t[0].p_given, -t[0].p_predicted, t[1], t[2]))
    return [s for s, _, _ in found]


@dataclass(frozen=True)
class SourceView:
    source: str
    n_fine: int
    accuracy: float | None
    others_accuracy: float | None  # accuracy of every other source together, on fine images
    n_set: int
    set_accuracy: float | None
    n_suspect: int
    confusions: list[tuple[str, str, int]]

    @property
    def disagrees(self) -> bool:
        return (self.n_fine >= SOURCE_MIN_IMAGES and self.accuracy is not None and self.others_accuracy is not None
                and self.others_accuracy - self.accuracy >= SOURCE_GAP)


def per_source(sp: SamplePredictions, k: int = 3, suspect: np.ndarray | None = None) -> list[SourceView]:
    """Accuracy, set accuracy, suspect count and the k worst confusions of each source; `suspect` is
    the store's mask from `suspect_masks` (computed for this store alone when None)."""
    pred = sp.predicted
    hit = sp.targets[np.arange(len(pred)), pred]
    fine, is_set = sp.fine, sp.targets.sum(axis=1) > 1
    suspect = suspect_masks([sp])[0] if suspect is None else suspect
    true = sp.targets.argmax(axis=1)
    views = []
    for source in dict.fromkeys(sp.sources.tolist()):
        mine = sp.sources == source
        f, others, s = fine & mine, fine & ~mine, is_set & mine
        pairs: dict[tuple[int, int], int] = {}
        for t, p in zip(true[f & ~hit], pred[f & ~hit], strict=True):
            pairs[(int(t), int(p))] = pairs.get((int(t), int(p)), 0) + 1
        worst = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        views.append(SourceView(
            source=str(source), n_fine=int(f.sum()), accuracy=float(hit[f].mean()) if f.any() else None,
            others_accuracy=float(hit[others].mean()) if others.any() else None, n_set=int(s.sum()),
            set_accuracy=float(hit[s].mean()) if s.any() else None, n_suspect=int((suspect & mine).sum()),
            confusions=[(sp.classes[t], sp.classes[p], n) for (t, p), n in worst]))
    return views


def label_issue_rows(suspects: Iterable[Sample]) -> list[dict[str, Any]]:
    """`label_issues.csv` rows (`label_issues.write_label_issues`) of ranked suspects, e.g.
    ``suspect_labels([oof_store])`` for a cross-validation's out-of-fold predictions."""
    return [{"path": s.path, "source": s.source, "given": s.given, "suggested": s.predicted,
             "label_quality": s.p_given, "rank": rank} for rank, s in enumerate(suspects, 1)]


def write_suspects_csv(path: str | Path, suspects: Iterable[Sample],
                       name: Callable[[Sample], str] = lambda s: s.path) -> Path:
    """`suspect_labels.csv`: one reviewed row per image (see docs/evaluation.md for the workflow);
    `name` gives the `path` column (the report: relative to the image's source root, as `exclude` takes it)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["rank", "split", "scores", "path", "source", "given_label", "predicted_label",
                     "given_label_probability", "predicted_probability", "top3"])
    for rank, s in enumerate(suspects, 1):
        writer.writerow([rank, s.split, "in-sample" if s.in_sample else "held-out", name(s), s.source, s.given,
                         s.predicted, f"{s.p_given:.4f}", f"{s.p_predicted:.4f}",
                         "; ".join(f"{c}={p:.3f}" for c, p in s.top3)])
    return atomic_write_text(path, buf.getvalue())


# --------------------------------------------------------------------------- thumbnails


class Thumbnails:
    """Small JPEG data URIs of image files, each made once, all within one byte budget.

    A file that cannot be read (moved or deleted since training) or that would
    exceed the budget gets None, and is counted in `missing` / `over_budget`, so the
    page can say why a tile has no picture; it is never replaced by a blank image.
    """

    def __init__(self, px: int = THUMB_PX, budget_bytes: int = THUMB_BUDGET_BYTES) -> None:
        self.px, self.budget = px, budget_bytes
        self.used = 0
        self.missing: dict[str, str] = {}
        self.over_budget = 0
        self._cache: dict[str, str | None] = {}

    def __call__(self, path: str) -> str | None:
        if path not in self._cache:
            self._cache[path] = self._make(path)
        return self._cache[path]

    def _make(self, path: str) -> str | None:
        try:
            data = jpeg_thumbnail(path, self.px)
        except (OSError, ValueError) as exc:  # PIL raises OSError subclasses for unreadable files
            self.missing[path] = str(exc) or type(exc).__name__
            log.debug("no thumbnail for %s: %s", path, exc)
            return None
        uri = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
        if self.used + len(uri) > self.budget:
            self.over_budget += 1
            return None
        self.used += len(uri)
        return uri


def jpeg_thumbnail(path: str | Path, px: int = THUMB_PX, quality: int = THUMB_QUALITY) -> bytes:
    """JPEG bytes of the image, EXIF-rotated, in RGB, fitting a px×px box (aspect kept)."""
    from PIL import Image, ImageOps

    from ..data import to_rgb

    with Image.open(path) as img:
        img.draft("RGB", (2 * px, 2 * px))  # JPEG: decode at a reduced scale, many times faster
        img = to_rgb(ImageOps.exif_transpose(img))
        img.thumbnail((px, px), Image.Resampling.BICUBIC)
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


# --------------------------------------------------------------------------- a run's stores

# The final evaluation writes val and test; `sustain evaluate --split train` adds eval_train (in-sample).
RUN_STORES = ("val", "test", "eval_train")


def load_run_predictions(run_dir: str | Path, notes: list[str]) -> list[SamplePredictions]:
    """The prediction stores of a run folder that exist; unreadable ones are named in `notes`."""
    stores = []
    for split in RUN_STORES:
        path = Path(run_dir) / predictions_file(split)
        if not path.is_file():
            continue
        try:
            stores.append(load_predictions(path))
        except ValueError as exc:
            notes.append(str(exc))
    return stores

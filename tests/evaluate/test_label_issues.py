"""The label-issue finder (sustain.evaluate.label_issues): injected flips found, ranked, written."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from sustain.evaluate.label_issues import (
    DEFAULT_METHOD,
    FIXED,
    LABEL_ISSUES_COLUMNS,
    METHODS,
    find_label_issues,
    write_label_issues,
)


def noisy_probs(n: int = 2000, c: int = 10, accuracy: float = 0.95, flip: float = 0.05,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs, given, flipped): a model right on `accuracy` of the images (unsure when wrong), and
    `flip` of the given labels moved to another class, which the model does not follow."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, c, n)
    guess = np.where(rng.random(n) < accuracy, true, (true + rng.integers(1, c, n)) % c)
    logits = rng.normal(0, 0.5, (n, c))
    logits[np.arange(n), guess] += np.where(guess == true, 4.0, 1.5)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    flipped = np.sort(rng.choice(n, round(flip * n), replace=False))
    given = true.copy()
    given[flipped] = (true[flipped] + rng.integers(1, c, len(flipped))) % c
    return probs.astype(np.float32), given, flipped


def precision_recall(found: list[tuple[int, float]], flipped: np.ndarray) -> tuple[float, float]:
    hits = len({i for i, _ in found} & set(flipped.tolist()))
    return hits / max(len(found), 1), hits / len(flipped)


@pytest.mark.parametrize("method", [DEFAULT_METHOD, FIXED])
def test_injected_flips_are_found_worst_first(method: str):
    probs, given, flipped = noisy_probs()
    found = find_label_issues(probs, given, method=method)
    precision, recall = precision_recall(found, flipped)
    # a flip the model itself gets wrong looks like any confident mistake: recall stays below 100%
    assert recall >= 0.7 and precision >= 0.85, (method, precision, recall)
    quality = [q for _, q in found]
    assert quality == sorted(quality)  # the worst label first
    i, q = found[0]
    assert q == pytest.approx(float(probs[i, given[i]]))  # label quality: the given class's probability


def test_every_method_runs_and_a_bad_one_is_named():
    probs, given, _ = noisy_probs(n=200)
    for method in METHODS:
        assert isinstance(find_label_issues(probs, given, method=method), list)
    with pytest.raises(ValueError, match="'prune_by_magic' is not one of"):
        find_label_issues(probs, given, method="prune_by_magic")
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        find_label_issues(probs, given[:-1])
    assert find_label_issues(probs[:0], given[:0]) == []


def test_one_given_class_falls_back_to_the_fixed_rule():
    probs = np.array([[0.05, 0.95], [0.9, 0.1], [0.8, 0.2]], dtype=np.float32)
    assert find_label_issues(probs, np.zeros(3, dtype=int)) == [(0, pytest.approx(0.05))]


def test_label_issues_csv_has_the_agreed_columns(tmp_path: Path):
    rows = [{"path": "a/b,c.jpg", "source": "s1", "given": "glass", "suggested": "can", "label_quality": 0.012345,
             "rank": 1}]
    out = write_label_issues(tmp_path, rows)
    assert out.name == "label_issues.csv"
    with out.open(newline="") as fh:
        back = list(csv.reader(fh))
    assert tuple(back[0]) == LABEL_ISSUES_COLUMNS == ("path", "source", "given", "suggested", "label_quality", "rank")
    assert back[1] == ["a/b,c.jpg", "s1", "glass", "can", "0.0123", "1"]
    with pytest.raises(ValueError, match=r"row 1 lacks \['rank'\]"):
        write_label_issues(tmp_path, [{k: v for k, v in rows[0].items() if k != "rank"}])


def test_a_prediction_store_gives_label_issue_rows_ranked_worst_first(tmp_path: Path):
    from sustain.evaluate.gallery import SamplePredictions, label_issue_rows, suspect_labels

    probs, given, flipped = noisy_probs(n=1000, c=4)
    classes = ("glass", "can", "peel", "bag")
    oof = SamplePredictions(split="oof", classes=classes, paths=np.array([f"img_{i}.jpg" for i in range(1000)]),
                            sources=np.array(["s"] * 1000), labels=np.array(classes)[given],
                            probs=probs, targets=np.eye(4, dtype=bool)[given])
    rows = label_issue_rows(suspect_labels([oof]))
    with write_label_issues(tmp_path, rows).open(newline="") as fh:
        back = list(csv.DictReader(fh))
    assert [int(r["rank"]) for r in back] == list(range(1, len(back) + 1))
    quality = [float(r["label_quality"]) for r in back]
    assert quality == sorted(quality)
    first = int(back[0]["path"].removeprefix("img_").removesuffix(".jpg"))
    assert back[0]["given"] == classes[given[first]] and back[0]["suggested"] == classes[probs[first].argmax()]
    assert len({r["path"] for r in back} & {f"img_{i}.jpg" for i in flipped}) >= 0.7 * len(flipped)


@pytest.mark.slow
def test_cleanlab_finds_injected_flips_on_a_small_lake(tmp_path: Path):
    """Real image files, decoded by the project's loader, 5% of their folder labels flipped;
    out-of-fold probabilities of a classifier trained on the noisy labels; the finder's CSV names the flips."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from sustain.data.scan import load_rgb

    digits = load_digits()
    n = 1000
    rng = np.random.default_rng(1)
    flipped = np.sort(rng.choice(n, n // 20, replace=False))
    given = digits.target[:n].copy()
    given[flipped] = (given[flipped] + rng.integers(1, 10, len(flipped))) % 10
    paths = []
    for i in range(n):  # the lake: one folder per (noisy) label, as a source on disk is laid out
        path = tmp_path / "lake" / f"digit_{given[i]}" / f"img_{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32)).save(path)
        paths.append(path)
    x = np.stack([np.asarray(load_rgb(p).convert("L").resize((8, 8)), dtype=np.float32).ravel() / 255 for p in paths])
    labels = np.array([int(p.parent.name.split("_")[1]) for p in paths])
    probs = cross_val_predict(LogisticRegression(max_iter=500), x, labels, cv=5, method="predict_proba")

    found = find_label_issues(probs, labels)
    rows = [{"path": str(paths[i].relative_to(tmp_path)), "source": "lake", "given": int(labels[i]),
             "suggested": int(probs[i].argmax()), "label_quality": q, "rank": r} for r, (i, q) in enumerate(found, 1)]
    with write_label_issues(tmp_path, rows).open(newline="") as fh:
        listed = [row["path"] for row in csv.DictReader(fh)]
    flipped_paths = {str(paths[i].relative_to(tmp_path)) for i in flipped}
    hits = len(flipped_paths & set(listed))
    assert hits / len(flipped) >= 0.8 and hits / len(listed) >= 0.6, (hits, len(listed), len(flipped))

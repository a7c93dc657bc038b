"""The error gallery's selections, its prediction store and its thumbnails (sustain.evaluate.gallery)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sustain.evaluate.gallery import (
    SamplePredictions,
    Thumbnails,
    confused_pairs,
    load_predictions,
    per_source,
    save_predictions,
    suspect_labels,
    top_mistakes,
)
from sustain.taxonomy import Taxonomy

TAX = Taxonomy(classes=("glass", "can", "peel", "bag"), sets={"RECYCLABLE": ("glass", "can")})


def store(rows: list[tuple[str, str, list[float]]], sources: list[str] | None = None) -> SamplePredictions:
    """rows: (path, given label, probabilities over glass/can/peel/bag)."""
    targets = np.array([[c in TAX.resolve(label) for c in range(4)] for _, label, _ in rows])
    return SamplePredictions(split="val", classes=TAX.classes, paths=np.array([r[0] for r in rows]),
                             sources=np.array(sources or ["a"] * len(rows)),
                             labels=np.array([r[1] for r in rows]),
                             probs=np.array([r[2] for r in rows], dtype=np.float32), targets=targets)


SP = store([
    ("right.jpg", "glass", [0.9, 0.05, 0.03, 0.02]),
    ("unsure_wrong.jpg", "glass", [0.3, 0.4, 0.2, 0.1]),
    ("sure_wrong.jpg", "glass", [0.02, 0.95, 0.02, 0.01]),
    ("peel_as_bag.jpg", "peel", [0.05, 0.05, 0.2, 0.7]),
    ("set_inside.jpg", "RECYCLABLE", [0.1, 0.85, 0.03, 0.02]),  # a can: fine for its set
    ("set_outside.jpg", "RECYCLABLE", [0.02, 0.03, 0.9, 0.05]),  # the set gets 5%: suspect
    ("glass_as_can_2.jpg", "glass", [0.2, 0.6, 0.1, 0.1]),
])


def test_top_mistakes_are_the_most_confident_wrong_fine_predictions():
    worst = top_mistakes(SP, n=3)
    assert [s.path for s in worst] == ["sure_wrong.jpg", "peel_as_bag.jpg", "glass_as_can_2.jpg"]
    first = worst[0]
    assert (first.given, first.predicted, first.source) == ("glass", "can", "a")
    assert first.p_predicted == pytest.approx(0.95) and first.p_given == pytest.approx(0.02)
    assert [c for c, _ in first.top3] == ["can", "glass", "peel"]
    assert {s.path for s in top_mistakes(SP)} == {"sure_wrong.jpg", "peel_as_bag.jpg", "glass_as_can_2.jpg",
                                                  "unsure_wrong.jpg"}  # set-labelled images are never "wrong"


def test_confused_pairs_come_with_their_most_confident_examples():
    pairs = confused_pairs(SP, k=5, per_pair=2)
    assert [(t, p, n) for t, p, n, _ in pairs] == [("glass", "can", 3), ("peel", "bag", 1)]
    assert [s.path for s in pairs[0][3]] == ["sure_wrong.jpg", "glass_as_can_2.jpg"]


def test_suspect_labels_use_the_probability_mass_inside_a_set():
    suspects = suspect_labels([SP], method="fixed_threshold")
    assert [s.path for s in suspects] == ["sure_wrong.jpg", "set_outside.jpg"]
    assert suspects[1].given == "RECYCLABLE" and suspects[1].p_given == pytest.approx(0.05)
    assert suspects[1].predicted == "peel"


def test_suspects_pool_val_and_test_and_list_held_out_before_in_sample():
    from dataclasses import replace

    rng = np.random.default_rng(0)
    given = rng.integers(0, 4, 400)
    probs = np.full((400, 4), 0.02, dtype=np.float32)
    probs[np.arange(400), given] = 0.94
    flips = np.arange(0, 400, 25)  # 16 images whose model sees another class
    probs[flips] = 0.02
    probs[flips, (given[flips] + 1) % 4] = 0.94
    targets = np.eye(4, dtype=bool)[given]
    names = np.array([f"{i}.jpg" for i in range(400)])

    def part(split: str, rows: slice, in_sample: bool = False) -> SamplePredictions:
        return SamplePredictions(split=split, classes=TAX.classes, paths=names[rows], sources=np.array(["a"] * 200),
                                 labels=np.array(TAX.classes)[given[rows]], probs=probs[rows], targets=targets[rows],
                                 in_sample=in_sample)

    val, test = part("val", slice(0, 200)), part("test", slice(200, 400))
    found = suspect_labels([val, test, replace(val, split="eval_train", in_sample=True)])
    held_out = [s for s in found if not s.in_sample]
    assert {s.path for s in held_out} == {f"{i}.jpg" for i in flips}
    assert {s.split for s in held_out} == {"val", "test"}
    assert [s.in_sample for s in found] == [False] * 16 + [True] * 8


def test_per_source_flags_the_source_that_disagrees():
    good = [(f"a{i}.jpg", "glass", [0.9, 0.05, 0.03, 0.02]) for i in range(20)]
    bad = [(f"b{i}.jpg", "glass", [0.1, 0.8, 0.05, 0.05]) for i in range(8)]
    bad += [(f"b{i}_ok.jpg", "glass", [0.9, 0.05, 0.03, 0.02]) for i in range(12)]
    sp = store(good + bad, ["clean"] * 20 + ["mislabelled"] * 20)
    views = {v.source: v for v in per_source(sp)}
    assert views["clean"].accuracy == 1.0 and not views["clean"].disagrees
    bad_view = views["mislabelled"]
    assert bad_view.accuracy == pytest.approx(0.6) and bad_view.others_accuracy == 1.0 and bad_view.disagrees
    assert bad_view.confusions == [("glass", "can", 8)] and bad_view.n_suspect == 8


def test_store_round_trips_without_pickle_and_names_a_broken_file(tmp_path: Path):
    path = save_predictions(tmp_path / "predictions_val.npz", SP)
    back = load_predictions(path)
    assert back.classes == TAX.classes and back.paths.tolist() == SP.paths.tolist()
    assert np.array_equal(back.probs, SP.probs) and np.array_equal(back.targets, SP.targets)
    assert back.labels.tolist()[4] == "RECYCLABLE" and not back.in_sample
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="predictions_val.npz"):
        load_predictions(path)


def test_suspects_csv_says_which_scores_are_in_sample(tmp_path: Path):
    from dataclasses import replace

    from sustain.evaluate.gallery import write_suspects_csv

    train = replace(SP, split="train", in_sample=True)
    write_suspects_csv(tmp_path / "s.csv", suspect_labels([SP, train], method="fixed_threshold"))
    rows = [r.split(",") for r in (tmp_path / "s.csv").read_text().splitlines()]
    assert rows[0][:7] == ["rank", "split", "scores", "path", "source", "given_label", "predicted_label"]
    assert [(r[1], r[2], r[3], r[5], r[6]) for r in rows[1:3]] == [
        ("val", "held-out", "sure_wrong.jpg", "glass", "can"), ("val", "held-out", "set_outside.jpg", "RECYCLABLE", "peel")]
    assert [r[2] for r in rows[3:]] == ["in-sample", "in-sample"] and rows[1][7] == "0.0200"


def test_thumbnails_are_small_rotated_jpegs_and_a_missing_file_is_counted(tmp_path: Path):
    big = tmp_path / "portrait.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored landscape, shown portrait
    Image.new("RGB", (1600, 1200), (200, 30, 30)).save(big, exif=exif.tobytes())
    thumbs = Thumbnails(px=128)
    uri = thumbs(str(big))
    assert uri is not None and uri.startswith("data:image/jpeg;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert img.format == "JPEG" and img.size == (96, 128)
    assert thumbs.used == len(uri) < 8_000

    assert thumbs(str(tmp_path / "gone.jpg")) is None and str(tmp_path / "gone.jpg") in thumbs.missing
    tight = Thumbnails(px=128, budget_bytes=len(uri) + 10)
    Image.new("RGB", (300, 300), (0, 90, 0)).save(tmp_path / "other.jpg")
    assert tight(str(big)) == uri and tight(str(tmp_path / "other.jpg")) is None and tight.over_budget == 1

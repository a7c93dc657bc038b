"""Predictor and `sustain predict`: same predictions as the evaluation, errors per file, ensembles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import (
    SMALL,
    loader_for,
    rows_for,
    save_tiny_checkpoint,
    tiny_model,
    write_corrupt,
    write_images,
)
from PIL import Image, ImageOps

from sustain import Predictor
from sustain.deploy.inference import predict_cli
from sustain.deploy.scoring import evaluate_checkpoint
from sustain.evaluate import collect_predictions
from sustain.taxonomy import Taxonomy


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = tiny_model(SMALL.num_classes)
    save_tiny_checkpoint(tmp_path / "run", model, SMALL, epoch=4, val_acc=0.75)
    return tmp_path / "run", model


def test_predict_reproduces_the_evaluation(tmp_path: Path, checkpoint):
    run, model = checkpoint
    paths = write_images(tmp_path / "photos", 7)
    # the evaluation path: training's dataset, eval transform and collect_predictions on the live model
    rows = rows_for(paths, [(0,)] * len(paths), SMALL)
    eval_probs = collect_predictions(model, loader_for(rows, SMALL, ["lake_a"]), "cpu", progress=False).probs

    results = Predictor.from_checkpoint(run, device="cpu").predict(paths, topk=SMALL.num_classes, batch_size=3)

    assert [r.input for r in results] == [str(p) for p in paths]
    for r, probs in zip(results, eval_probs, strict=True):
        assert r.ok and r.label == SMALL.classes[int(probs.argmax())]
        got = np.array([dict(r.topk)[c] for c in SMALL.classes])
        np.testing.assert_allclose(got, probs.numpy(), atol=1e-5)
        assert r.bin == SMALL.bin_of(r.label)

    # and `sustain evaluate` on a folder labelled with predict's answers scores 100%
    for p, r in zip(paths, results, strict=True):
        (tmp_path / "labelled" / r.label).mkdir(parents=True, exist_ok=True)
        Image.open(p).save(tmp_path / "labelled" / r.label / p.name)
    report = evaluate_checkpoint(run, data_dir=tmp_path / "labelled", device="cpu")
    assert report["accuracy"] == 1.0 and report["n_fine"] == len(paths)


def test_unreadable_files_get_an_error_entry_and_the_rest_are_scored(tmp_path: Path, checkpoint):
    run, _ = checkpoint
    folder = tmp_path / "photos"
    good = write_images(folder, 3)
    write_corrupt(folder / "b_truncated.png")
    (folder / "c_notes.jpg").write_text("not an image")
    (folder / "readme.txt").write_text("ignored: not an image extension")

    results = Predictor.from_checkpoint(run, device="cpu").predict([folder, tmp_path / "missing.jpg"], topk=2)

    by_name = {Path(r.input).name: r for r in results}
    assert sorted(by_name) == sorted([p.name for p in good] + ["b_truncated.png", "c_notes.jpg", "missing.jpg"])
    assert [r.input for r in results[:4]] == sorted(r.input for r in results[:4])  # folder walked in order
    assert "truncated" in by_name["b_truncated.png"].error and by_name["b_truncated.png"].topk == []
    assert by_name["c_notes.jpg"].error and by_name["missing.jpg"].error == "no such file"
    for p in good:
        r = by_name[p.name]
        assert r.ok and len(r.topk) == 2 and r.topk[0][1] >= r.topk[1][1] and r.bin is not None


def test_predict_cli_json_lines_parse_and_the_exit_code_reports_failures(tmp_path: Path, checkpoint, run_cli):
    run, _ = checkpoint
    good = write_images(tmp_path / "photos", 2)

    ok = run_cli("predict", "--checkpoint", run, *good, "--topk", "3", "--json")
    assert ok.code == 0, ok.output
    lines = [json.loads(line) for line in ok.out.splitlines()]
    assert [d["input"] for d in lines] == [str(p) for p in good]
    for d in lines:
        assert d["error"] is None and len(d["topk"]) == 3 and d["bin"] in SMALL.bins
        assert {t["class"] for t in d["topk"]} <= set(SMALL.classes)

    bad = write_corrupt(tmp_path / "photos" / "broken.png")
    failed = run_cli("predict", "--checkpoint", run, good[0], bad, "--json")
    assert failed.code == 1
    entries = [json.loads(line) for line in failed.out.splitlines()]
    assert entries[0]["error"] is None and entries[1]["error"] and entries[1]["topk"] == []

    table = run_cli("predict", "--checkpoint", run, good[0], bad)
    assert table.code == 1
    assert "IMAGE" in table.out and "ERROR" in table.out and "1 image(s) classified, 1 failed" in table.out
    header, first = table.out.splitlines()[:2]
    assert first.startswith(str(good[0])) and first.index(" ", len(str(good[0]))) <= header.index("CLASS")


def test_ensemble_averages_probabilities(tmp_path: Path, checkpoint, capsys):
    run_a, _ = checkpoint
    save_tiny_checkpoint(tmp_path / "run_b", tiny_model(SMALL.num_classes, seed=7), SMALL)
    image = write_images(tmp_path / "photos", 1)

    def probs(results) -> np.ndarray:
        return np.array([dict(results[0].topk)[c] for c in SMALL.classes])

    a = probs(Predictor.from_checkpoint(run_a, "cpu").predict(image, topk=4))
    b = probs(Predictor.from_checkpoint(tmp_path / "run_b", "cpu").predict(image, topk=4))
    capsys.readouterr()
    assert predict_cli([run_a, tmp_path / "run_b"], image, topk=4, as_json=True, device="cpu") == 0
    line = json.loads(capsys.readouterr().out)
    ensemble = np.array([{t["class"]: t["probability"] for t in line["topk"]}[c] for c in SMALL.classes])
    np.testing.assert_allclose(ensemble, (a + b) / 2, atol=1e-6)

    other = Taxonomy(classes=SMALL.classes[::-1])
    save_tiny_checkpoint(tmp_path / "run_c", tiny_model(4), other)
    with pytest.raises(Exception, match="other classes"):
        predict_cli([run_a, tmp_path / "run_c"], image, device="cpu")


def test_tta_averages_with_the_mirror_image_and_pil_inputs_work(tmp_path: Path, checkpoint):
    run, _ = checkpoint
    predictor = Predictor.from_checkpoint(run, "cpu")
    image = Image.open(write_images(tmp_path / "photos", 1)[0])

    plain = predictor.predict_proba([image])
    mirrored = predictor.predict_proba([ImageOps.mirror(image)])
    tta = predictor.predict_proba([image], tta=True)
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, atol=1e-6)
    assert not np.allclose(plain, mirrored)  # the flip really changes the input

    result = predictor.predict(image.convert("L"), topk=1)  # any PIL mode, a single image
    assert len(result) == 1 and result[0].ok and result[0].input == "<image 0>"

"""Calibration where a user meets it (issue #29): the engine stores T and the threshold, and
predict (torch and ONNX), `sustain evaluate` and the export apply and carry them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from engine_helpers import make_tiny_lake, read_json, tiny_config
from eval_helpers import SMALL, save_tiny_checkpoint, tiny_model, write_images

from sustain import Predictor
from sustain.artifacts import ModelMeta, RunRecord
from sustain.config import config_from_dict
from sustain.deploy.export import export_onnx
from sustain.deploy.scoring import evaluate_checkpoint
from sustain.errors import ConfigError
from sustain.evaluate.gallery import load_predictions
from sustain.training.checkpoints import record_calibration

T = 0.3


def calibrated_run(root: Path, threshold: float | None) -> Path:
    run = root / "run"
    save_tiny_checkpoint(run, tiny_model(SMALL.num_classes), SMALL, epoch=2, val_acc=0.5)
    record_calibration(run, {"temperature": T, "method": "fixed", "reason": "test", "accept_accuracy": 0.9,
                             "accept_on": "bin", "accept_threshold": threshold,
                             "accept_thresholds": {"bin": threshold, "class": threshold}})
    return run


@pytest.mark.slow
def test_torch_and_onnx_predictors_apply_the_same_temperature(tmp_path: Path):
    run = calibrated_run(tmp_path, threshold=0.5)
    loaded = Predictor.from_checkpoint(run, "cpu")
    export_onnx(loaded.model, loaded.meta, run / "export" / "model.onnx")
    images = write_images(tmp_path / "img", 6)
    torch_p, onnx_p = loaded, Predictor.from_checkpoint(run, "cpu", backend="onnx")
    assert torch_p.temperature == onnx_p.temperature == T

    from PIL import Image
    pil = [Image.open(p).convert("RGB") for p in images]
    calibrated = torch_p.predict_proba(pil)
    np.testing.assert_allclose(onnx_p.predict_proba(pil), calibrated, atol=1e-4)
    logits = torch_p.backend.logits(pil)
    np.testing.assert_allclose(calibrated, torch.from_numpy(logits / T).softmax(1).numpy(), atol=1e-6)
    assert not np.allclose(calibrated, torch.from_numpy(logits).softmax(1).numpy(), atol=1e-3)  # T changed them

    for t, o in zip(torch_p.predict(images), onnx_p.predict(images), strict=True):
        bin_prob = sum(p for c, p in dict(t.topk).items() if SMALL.bin_of(c) == t.bin)
        assert t.decision == o.decision and t.to_dict()["decision"] == t.decision
        assert t.decision == ("accept" if bin_prob >= 0.5 else "review") or len(t.topk) < SMALL.num_classes
    props = {p.key: json.loads(p.value) for p in onnx.load(str(run / "export" / "model.onnx")).metadata_props}
    assert props["temperature"] == T and props["accept_threshold"] == 0.5 and props["accept_on"] == "bin"


def test_no_threshold_sends_everything_to_review(tmp_path: Path, run_cli):
    run = calibrated_run(tmp_path, threshold=None)
    images = write_images(tmp_path / "img", 3)
    result = run_cli("predict", "--checkpoint", run, *images, "--json", "--topk", "4")
    lines = [json.loads(line) for line in result.out.splitlines() if line.startswith("{")]
    assert [d["decision"] for d in lines] == ["review"] * 3
    table = run_cli("predict", "--checkpoint", run, *images)
    assert "DECISION" in table.out and table.out.count("review") == 3
    rows = list(csv.DictReader(io.StringIO(run_cli("predict", "--checkpoint", run, *images, "--csv").out)))
    assert [r["decision"] for r in rows] == ["review"] * 3  # the CSV carries the decision too
    assert [r["input"] for r in rows] == [str(p) for p in images] and all(r["class"] for r in rows)
    assert abs(float(rows[0]["probability"]) - lines[0]["topk"][0]["probability"]) < 1e-6


def test_a_model_without_calibration_has_no_decision(tmp_path: Path):
    run = tmp_path / "run"
    save_tiny_checkpoint(run, tiny_model(SMALL.num_classes), SMALL)
    (result,) = Predictor.from_checkpoint(run, "cpu").predict(write_images(tmp_path / "img", 1))
    assert result.decision is None and ModelMeta.read(run).temperature == 1.0


@pytest.mark.parametrize(("key", "value", "says"), [
    ("calibration.temperature", "hot", "auto, off or a positive number"),
    ("calibration.temperature", 0, "greater than 0"),
    ("eval.accept_accuracy", 1.2, "less than 1"),
    ("eval.accept_accuracy", "yes", "between 0 and 1"),
])
def test_bad_values_get_a_config_error_naming_the_key(key, value, says):
    section, name = key.split(".")
    raw = {"data": {"sources": [{"name": "a", "root": "a", "label_map": "identity"}]}, section: {name: value}}
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert key in str(err.value) and says in str(err.value)


def test_bare_off_in_yaml_turns_calibration_off(write_config):
    from sustain.config import load_config

    path = write_config("data:\n  sources: [{name: a, root: a, label_map: identity}]\ncalibration:\n  temperature: off\n")
    assert load_config(path).calibration.temperature == "off"


@pytest.mark.slow
def test_training_stores_t_and_threshold_and_evaluate_applies_them(tmp_path: Path):
    from sustain.training.engine import train

    lake = make_tiny_lake(tmp_path / "lake", per_class=12)
    cfg = tiny_config(lake, tmp_path / "out", train={"epochs": 1}, calibration={"temperature": 2.0},
                      eval={"accept_accuracy": 0.3})
    assert train(cfg).ok
    out = tmp_path / "out"
    meta, record = ModelMeta.read(out), RunRecord.read(out)
    assert meta.temperature == 2.0 and meta.accept_accuracy == 0.3 and meta.accept_on == "class"
    assert record.calibration["temperature"] == 2.0 and record.calibration["method"] == "fixed"
    report = read_json(out / "test_classification_report.json")
    assert report["temperature"] == 2.0 and "expected_calibration_error_uncalibrated" in report
    assert report["accept_or_review"]["class"]["n"] == report["n_fine"]
    store = load_predictions(out / "predictions_val.npz")
    probs = Predictor.from_checkpoint(out, "cpu").predict(list(store.paths), topk=len(cfg.taxonomy.classes))
    got = np.array([[dict(p.topk)[c] for c in store.classes] for p in probs])
    np.testing.assert_allclose(got, store.probs, atol=1e-4)  # the store holds what predict answers: calibrated
    evaluated = evaluate_checkpoint(out, "val", device="cpu")
    val = read_json(out / "classification_report.json")
    assert evaluated["temperature"] == 2.0
    (best,) = out.glob("best_model_epoch*.pth")  # a training checkpoint finds the calibration beside it
    assert Predictor.from_checkpoint(best, "cpu").temperature == 2.0
    assert evaluated["expected_calibration_error"] == pytest.approx(val["expected_calibration_error"], abs=1e-6)


def test_model_card_states_t_threshold_and_the_test_verdict(tmp_path: Path):
    from sustain.deploy.model_card import build_model_card

    meta = {**ModelMeta.read(calibrated_run(tmp_path, threshold=0.8)).to_dict()}
    report = {"split": "test", "expected_calibration_error": 0.03, "expected_calibration_error_uncalibrated": 0.15,
              "accept_or_review": {"decided_on": "bin", "bin": {
                  "coverage": 0.9, "accepted_accuracy": 0.99, "interval": [0.97, 0.998], "review": 12, "n": 120,
                  "status": "met"}}}
    card = build_model_card(meta, {"test_report": report})
    assert "T = 0.3" in card and "0.150 before, 0.030 after" in card
    assert "bin probability ≥ 0.8000" in card and "12 of 120 to review: met" in card

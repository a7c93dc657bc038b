"""`sustain export`: ONNX and int8 files with their metadata, the parity gate, the timm model folder,
and the ONNX Runtime backend of `Predictor` / `sustain predict --backend onnx`.

One run is exported once per module (the dynamo exporter takes seconds even for a tiny ViT);
the tests read its files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from engine_helpers import read_json
from eval_helpers import (
    SMALL,
    loader_for,
    rows_for,
    save_tiny_checkpoint,
    tiny_model,
    write_corrupt,
    write_images,
)

from sustain import Predictor
from sustain.data.manifest import MANIFEST_COLUMNS
from sustain.deploy.export import PixelModel, export_run
from sustain.evaluate import collect_predictions, write_split_report

N_TEST = 16


def make_run(root: Path, model: torch.nn.Module) -> Path:
    """A run folder as training leaves it: best weights, manifest (val + test rows on real PNGs),
    run.json, data_summary.json and the test classification report."""
    run = root / "run"
    save_tiny_checkpoint(run, model, SMALL, epoch=3, val_acc=0.8)
    val = write_images(root / "img", 4, prefix="val")
    test = write_images(root / "img", N_TEST, seed=3, prefix="test")
    lines = [",".join(MANIFEST_COLUMNS)]
    lines += [f"{p},v/{p.name},lake_a,glass_jar,val,hv{i},{i},0" for i, p in enumerate(val)]
    lines += [f"{p},t/{p.name},lake_{'ab'[i % 2]},{SMALL.classes[i % 4]},test,ht{i},{10 + i},0"
              for i, p in enumerate(test)]
    (run / "manifest.csv").write_text("\n".join(lines) + "\n")
    rows = rows_for(test, [(i % 4,) for i in range(N_TEST)], SMALL)
    preds = collect_predictions(model, loader_for(rows, SMALL, ["lake_a"]), "cpu", progress=False)
    write_split_report(preds, SMALL, ["lake_a"], run, "test")
    (run / "run.json").write_text(json.dumps({"classes": list(SMALL.classes), "seed": 42, "epochs_completed": 3,
                                              "device": {"type": "cpu", "name": "CPU", "precision": "fp32"},
                                              "versions": {"torch": torch.__version__, "timm": timm.__version__}}))
    (run / "data_summary.json").write_text(json.dumps({
        "total_images": 20, "manifest_hash": "test", "splits": {"train": 0, "val": 4, "test": 16},
        "sources": {"lake_a": {"images": 12, "splits": {"val": 4, "test": 8}, "corrupt": 1, "duplicates_merged": 2},
                    "lake_b": {"images": 8, "splits": {"test": 8}, "corrupt": 0, "duplicates_merged": 0}},
        "duplicates": {"exact_merged": 2, "conflicting_dropped": 0, "near_duplicate_groups": 0}}))
    return run


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model is fastest on one thread, and the cores are shared
    root = tmp_path_factory.mktemp("export")
    model = tiny_model(SMALL.num_classes)
    run = make_run(root, model)
    report = export_run(run, ["onnx"], quantize="int8")
    yield run, model, report
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- the files


def test_export_writes_onnx_and_int8_with_metadata_and_a_dynamic_batch(exported):
    run, model, _ = exported
    out = run / "export"
    fp32, int8 = out / "model.onnx", out / "model_int8.onnx"
    assert int8.stat().st_size < fp32.stat().st_size

    props = {p.key: json.loads(p.value) for p in onnx.load(str(fp32)).metadata_props}
    assert props["classes"] == list(SMALL.classes) and props["bins"]["compost"] == ["banana_peel"]
    assert props["sets"] == {"RECYCLABLE": ["glass_jar", "tin_can"]}
    assert props["input_size"] == [3, 32, 32] and props["mean"] == [0.5] * 3 and props["crop_pct"] == 0.875
    assert props["model_name"] == "test_vit" and props["manifest_hash"] == "test" and props["opset"] >= 18
    assert props["sustain_version"] and props["precision"] == "fp32"
    assert {p.key: json.loads(p.value) for p in onnx.load(str(int8)).metadata_props}["precision"] == "int8"

    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(uint8)" and inp.shape[1:] == [3, 32, 32]
    wrapper = PixelModel(model, (0.5,) * 3, (0.5,) * 3).eval()
    for batch in (1, 5):  # any batch size: the axis is dynamic
        pixels = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
        (logits,) = session.run(None, {"image": pixels.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(logits, wrapper(pixels).numpy(), atol=1e-5)


def test_parity_report_holds_both_sides_and_passes(exported):
    run, _, report = exported
    on_disk = read_json(run / "export" / "export_report.json")
    assert on_disk == json.loads(json.dumps(report))
    assert on_disk["passed"] is True and on_disk["split"] == "test" and on_disk["n_images"] == N_TEST
    fp32, int8 = on_disk["files"]["model.onnx"], on_disk["files"]["model_int8.onnx"]
    assert fp32["thresholds"]["top1_agreement"] == 1.0  # under 1,000 images: every answer must agree
    assert int8["thresholds"] == {"top1_agreement": 0.99, "bin_agreement": 0.99, "abs_delta_macro_f1_points": 0.5}
    for r in (fp32, int8):
        assert r["n"] == N_TEST and r["top1_agreement"] == 1.0 and r["bin_agreement"] == 1.0 and r["passed"]
        assert set(r["accuracy"]) == {"torch", "exported", "delta"} and r["macro_f1"]["delta"] == 0.0
        assert r["latency_ms_per_image"]["torch"] > 0 and r["latency_ms_per_image"]["exported"] > 0
    # the same test accuracy as the run's own final evaluation (same decode, resize, labels)
    assert fp32["accuracy"]["torch"] == pytest.approx(read_json(run / "test_classification_report.json")["accuracy"])
    assert fp32["max_abs_prob_diff"] < 1e-5 < int8["max_abs_prob_diff"]


def test_model_folder_opens_with_timm_and_has_a_model_card(exported):
    run, model, _ = exported
    folder = run / "export" / "model"
    config = read_json(folder / "config.json")
    assert config["architecture"] == "test_vit" and config["num_classes"] == 4
    assert config["label_names"] == list(SMALL.classes)
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 32, 32] and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bilinear"

    reopened = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # reads the folder; no network
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reopened(x), model(x))

    card = (folder / "README.md").read_text(encoding="utf-8")
    for needle in ["library_name: timm", "## Intended use", "| 2 | banana_peel | compost |", "| lake_b | 8 |",
                   "2 exact copies merged", "expected calibration error", "| crisp_packet |",
                   "## Known failure modes", "timm " + timm.__version__, "upload_folder", "never uploads"]:
        assert needle in card, needle


# --------------------------------------------------------------------------- the ONNX backend


def test_onnx_predictor_gives_the_torch_answers_and_the_same_errors(exported, tmp_path: Path):
    run, _, _ = exported
    folder = tmp_path / "photos"
    write_images(folder, 7, seed=11)
    write_corrupt(folder / "broken.png")
    inputs = [folder, tmp_path / "missing.jpg"]

    torch_results = Predictor.from_checkpoint(run, "cpu").predict(inputs, topk=3, batch_size=3)
    onnx_predictor = Predictor.from_checkpoint(run, "cpu", backend="onnx")  # finds export/model.onnx
    onnx_results = onnx_predictor.predict(inputs, topk=3, batch_size=3)

    assert onnx_predictor.classes == SMALL.classes and onnx_predictor.model is None
    assert [r.input for r in onnx_results] == [r.input for r in torch_results]
    for t, o in zip(torch_results, onnx_results, strict=True):
        assert o.error == t.error
        assert [c for c, _ in o.topk] == [c for c, _ in t.topk] and o.bin == t.bin
        np.testing.assert_allclose([p for _, p in o.topk], [p for _, p in t.topk], atol=1e-5)
    assert sum(not r.ok for r in onnx_results) == 2


def test_predict_cli_backend_onnx(exported, tmp_path: Path, run_cli):
    run, _, _ = exported
    images = write_images(tmp_path / "photos", 2, seed=5)
    as_torch = run_cli("predict", "--checkpoint", run, *images, "--json")
    as_onnx = run_cli("predict", "--checkpoint", run / "export" / "model.onnx", *images, "--json", "--backend", "onnx")
    assert as_torch.code == as_onnx.code == 0, as_onnx.output
    for t, o in zip(as_torch.out.splitlines(), as_onnx.out.splitlines(), strict=True):
        t, o = json.loads(t), json.loads(o)
        assert [x["class"] for x in o["topk"]] == [x["class"] for x in t["topk"]] and o["bin"] == t["bin"]

    missing = run_cli("predict", "--checkpoint", tmp_path, images[0], "--backend", "onnx")
    assert missing.code == 2 and "No ONNX model" in missing.output and "sustain export" in missing.output


# --------------------------------------------------------------------------- bad input


def test_bad_input_gets_a_clear_error_before_anything_is_written(exported, tmp_path: Path, run_cli):
    run, _, _ = exported
    missing = run_cli("export", tmp_path / "nowhere")
    assert missing.code == 2 and "Checkpoint not found" in missing.output

    unknown = run_cli("export", run, "--format", "tflite")
    assert unknown.code == 2 and "tflite" in unknown.output and "onnx, coreml" in unknown.output

    coreml = run_cli("export", run, "--format", "coreml", "--out", tmp_path / "cm")
    assert coreml.code == 2 and "pip install coremltools" in coreml.output and "macOS" in coreml.output
    assert not (tmp_path / "cm").exists()

    other = tmp_path / "other"  # a checkpoint of another taxonomy inside this run's folder
    other.mkdir()
    save_tiny_checkpoint(other, tiny_model(3), SMALL.__class__(classes=SMALL.classes[:3]))
    (other / "run.json").write_text((run / "run.json").read_text())
    mismatch = run_cli("export", other)
    assert mismatch.code == 2 and "other classes than its run folder" in mismatch.output
    assert not (other / "export").exists()


@pytest.mark.slow
def test_a_broken_export_fails_the_gate_and_no_verify_says_it_skipped(exported, tmp_path: Path, run_cli, monkeypatch):
    run, _, _ = exported
    # A classic deployment bug: the exported graph reads the channels as BGR.
    forward = PixelModel.forward
    monkeypatch.setattr(PixelModel, "forward", lambda self, image: forward(self, image.flip(1)))

    failed = run_cli("export", run, "--out", tmp_path / "bgr")
    assert failed.code == 1, failed.output
    assert "Parity gate failed for model.onnx" in failed.output and "top-1 agreement" in failed.output
    report = read_json(tmp_path / "bgr" / "export_report.json")
    assert report["passed"] is False and report["files"]["model.onnx"]["failures"]
    assert report["files"]["model.onnx"]["top1_agreement"] < 1.0

    skipped = run_cli("export", run, "--out", tmp_path / "unchecked", "--no-verify")
    assert skipped.code == 0 and "PARITY GATE SKIPPED" in skipped.output
    assert read_json(tmp_path / "unchecked" / "export_report.json")["verified"] is False


@pytest.mark.slow
def test_eva02_with_rope_exports_and_passes_the_gate(tmp_path: Path):
    """EVA02 is the product's default family; its rotary position embedding must survive the export."""
    from eval_helpers import export_meta

    from sustain.training.checkpoints import save_best, state_dict_copy

    torch.manual_seed(0)
    kwargs = {"img_size": 28, "drop_path_rate": 0.0, "depth": 2}  # two blocks: RoPE and all, 6x faster to export
    eva = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=4, **kwargs).eval()
    meta = {**export_meta(SMALL), "model_name": "eva02_tiny_patch14_224", "input_size": [3, 28, 28],
            "model_kwargs": kwargs}
    run = make_run(tmp_path, tiny_model(SMALL.num_classes))  # the manifest and artifacts
    save_best(run, state_dict_copy(eva), meta)  # replaces the weights with EVA02's

    report = export_run(run, ["onnx"])

    assert report["passed"] and report["files"]["model.onnx"]["top1_agreement"] == 1.0
    assert report["files"]["model.onnx"]["max_abs_prob_diff"] < 1e-4

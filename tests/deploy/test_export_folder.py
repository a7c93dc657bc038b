"""The export folder loads everywhere it says it does (issue #30, item 0): the timm model folder of every
family Sustain trains, a re-export that leaves no file the new report does not vouch for, and
config.json and the card stating the weights' real origin with counts that match the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from engine_helpers import read_json
from eval_helpers import SIZE, SMALL, export_meta, write_images
from test_export import make_run

from sustain import Predictor
from sustain.deploy import export as export_module
from sustain.deploy.export import export_run
from sustain.deploy.model_card import build_model_card
from sustain.training.checkpoints import save_best, state_dict_copy

# One small model of each family Sustain trains; conv nets take no img_size.
FAMILIES = {
    "test_resnet": {},
    "test_convnext": {},
    "test_efficientnet": {},
    "test_vit": {},
    "eva02_tiny_patch14_224": {"depth": 2},
}


def run_with(tmp: Path, name: str, extra: dict, pretrained: bool | str = False) -> tuple[Path, torch.nn.Module]:
    """A run folder (manifest, reports) whose weights are ``name``, trained with input_size set."""
    torch.manual_seed(0)
    kwargs = {"img_size": SIZE, "drop_path_rate": 0.0, **extra}
    try:
        model = timm.create_model(name, pretrained=False, num_classes=4, **kwargs).eval()
    except TypeError:  # a conv net: as sustain.model does, without img_size
        kwargs.pop("img_size")
        model = timm.create_model(name, pretrained=False, num_classes=4, **kwargs).eval()
        kwargs["img_size"] = SIZE  # best_model.json keeps what the config said
    from eval_helpers import tiny_model

    run = make_run(tmp / name, tiny_model(SMALL.num_classes))
    save_best(run, state_dict_copy(model), {**export_meta(SMALL), "model_name": name, "model_kwargs": kwargs})
    record = read_json(run / "run.json")
    record["config"] = {"model": {"name": name, "pretrained": pretrained}}
    (run / "run.json").write_text(json.dumps(record))
    return run, model


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_exports_a_folder_that_timm_and_predictor_load(name: str, tmp_path: Path):
    run, model = run_with(tmp_path, name, FAMILIES[name])
    report = export_run(run, ["onnx"])
    assert report["passed"], report
    folder = run / "export" / "model"
    config = read_json(folder / "config.json")
    assert ("img_size" in config["model_args"]) == (name in ("test_vit", "eva02_tiny_patch14_224"))

    reopened = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # the TypeError of the issue
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(reopened(x), model(x))

    photos = write_images(tmp_path / "photos", 3, seed=4)
    by_torch = Predictor.from_checkpoint(run, "cpu").predict(photos)
    by_onnx = Predictor.from_checkpoint(run / "export", "cpu", backend="onnx").predict(photos)
    assert [p.label for p in by_onnx] == [p.label for p in by_torch] and all(p.ok for p in by_onnx)


def test_a_new_head_loads_as_the_card_says(tmp_path: Path):
    run, model = run_with(tmp_path, "test_resnet", {})
    export_run(run, ["onnx"], verify=False)
    folder = run / "export" / "model"
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert 'pretrained=True, num_classes=10)' in card
    new = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=10)
    assert new.get_classifier().out_features == 10
    torch.testing.assert_close(new.state_dict()["conv1.0.weight"], model.state_dict()["conv1.0.weight"])


@pytest.mark.slow
def test_re_export_leaves_only_what_the_new_report_vouches_for(tmp_path: Path, monkeypatch):
    run, _ = run_with(tmp_path, "test_vit", {})
    out = run / "export"
    export_run(run, ["onnx"], quantize="int8")
    assert (out / "model_int8.onnx").is_file()

    # the new int8 model breaks (its weights zeroed): the gate rejects it, and no model_int8.onnx remains
    real = export_module.quantize_int8

    def broken(src: Path, dst: Path) -> Path:
        import onnx
        from onnx import numpy_helper

        path = real(src, dst)
        proto = onnx.load(str(path))
        for init in proto.graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.dtype == np.int8:
                init.CopyFrom(numpy_helper.from_array(np.zeros_like(arr), init.name))
        onnx.save(proto, str(path))
        return path

    monkeypatch.setattr(export_module, "quantize_int8", broken)
    with pytest.raises(Exception, match="Parity gate failed for model_int8.onnx"):
        export_run(run, ["onnx"], quantize="int8")
    report = read_json(out / "export_report.json")
    assert report["files"]["model_int8.onnx"]["rejected_as"] == "model_int8.rejected.onnx"
    assert not (out / "model_int8.onnx").exists() and (out / "model_int8.rejected.onnx").is_file()
    assert (out / "model.onnx").is_file() and report["files"]["model.onnx"]["passed"]

    monkeypatch.setattr(export_module, "quantize_int8", real)
    export_run(run, ["onnx"])  # no int8 this time: nothing int8 is left from before
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "model", "model.onnx"]


def test_config_and_card_state_the_weights_origin(tmp_path: Path):
    scratch, _ = run_with(tmp_path / "a", "test_resnet", {}, pretrained=False)
    hub, _ = run_with(tmp_path / "b", "test_resnet", {}, pretrained=True)
    for run in (scratch, hub):
        export_run(run, ["onnx"], verify=False)
    cfg = read_json(scratch / "export" / "model" / "config.json")
    assert cfg["sustain_weights"] == {"origin": "scratch"}
    assert "tag" not in cfg["pretrained_cfg"] and "license" not in cfg["pretrained_cfg"]
    card = (scratch / "export" / "model" / "README.md").read_text(encoding="utf-8")
    assert "Trained from scratch" in card and "r160_in1k" not in card and "apache-2.0" not in card
    # the reopened model carries no inherited tag either
    assert "tag" not in timm.create_model(f"local-dir:{scratch / 'export' / 'model'}", pretrained=True).pretrained_cfg

    cfg = read_json(hub / "export" / "model" / "config.json")
    assert cfg["sustain_weights"]["origin"] == "pretrained" and cfg["pretrained_cfg"]["tag"] == "r160_in1k"
    card = (hub / "export" / "model" / "README.md").read_text(encoding="utf-8")
    assert "Fine-tuned from timm's pretrained `test_resnet.r160_in1k`" in card and "apache-2.0" in card


def test_card_counts_match_its_metrics_and_empty_cells_say_why():
    report = {"split": "test", "classes": [], "n_samples": 130, "n_fine": 120, "n_set": 10, "failed": 0,
              "accuracy": 0.5, "set_accuracy": 0.9,
              "per_source_accuracy": {"lake_a": {"acc": 0.5, "n_fine": 120, "set_acc": None, "n_set": 0},
                                      "lake_b": {"acc": None, "n_fine": 0, "set_acc": None, "n_set": 0},
                                      "lake_c": {"acc": None, "n_fine": 0, "set_acc": 0.9, "n_set": 10}}}
    card = build_model_card({**export_meta(SMALL), "weights": {"origin": "scratch"}}, {"test_report": report})
    assert "130" not in card  # the metrics cover 120 images with one class, and say so
    assert "the 120 images with one class" in card and "the 10 images with a set label" in card
    assert "| lake_b | n/a (no images from this source in this split) | 0 |" in card
    assert "| lake_c | n/a (only set-labelled images here: set accuracy 90.00%) | 0 |" in card

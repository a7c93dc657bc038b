"""The training run end to end: messages, artifacts, determinism, guards (SPEC §6, §7)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import (
    deterministic_history,
    make_tiny_lake,
    one_thread,  # noqa: F401  (autouse fixture)
    read_json,
    tiny_config,
    tiny_config_dict,
    write_yaml,
)

pytestmark = pytest.mark.slow

STARTUP_AND_EPOCH_MESSAGES = [
    "✓ Random seed set to 42",
    "🖥️  Using device: cpu",
    "Creating model: test_vit",
    "Model parameters: ",
    "✅ Transform validation passed",
    "📂 Ingesting demo_master from ",
    "📊 Dataset Summary:",
    "  ✓ Total images loaded: ",
    "✅ Pre-training sanity check passed!",
    "📊 Per-Class Performance:",
    "  Macro F1: ",
    "  Worst 5 classes:",
    "Epoch 1/2: Train Acc ",
    "✓ Saved best model checkpoint: ",
    "Epoch 2/2: Train Acc ",
    "Success Criteria Checklist",
    "✓ Training completed successfully",
]

SPEC_ARTIFACTS = [
    "last.pth", "best_model.safetensors", "best_model.json", "metrics_history.json", "confusion_matrix.npy",
    "test_confusion_matrix.npy", "classification_report.json", "test_classification_report.json", "run.json",
    "manifest.csv", "data_summary.json", "corrupt_files.txt", "training_curves.png", "confusion_matrix.png",
    "per_class_f1.png", "report.html",
]
HISTORY_KEYS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr", "skipped", "health",
                "epoch_seconds", "images_per_second", "per_class_f1"]


@pytest.fixture(scope="module")
def tiny_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lake(tmp_path_factory.mktemp("tiny_lake"))


def assert_in_order(text: str, needles: list[str]) -> None:
    pos = 0
    for needle in needles:
        found = text.find(needle, pos)
        assert found >= 0, f"{needle!r} missing after position {pos}:\n{text[pos:pos + 2000]}"
        pos = found + len(needle)


def test_demo_run_writes_every_artifact_and_prints_the_spec_messages_in_order(demo_config, write_config, run_cli,
                                                                              tmp_path: Path) -> None:
    demo_config["data"].update(num_workers=0, cache_dir=str(tmp_path / "cache"))
    demo_config["train"].update(epochs=2, max_steps_per_epoch=4)
    result = run_cli("train", "--config", write_config(demo_config))
    assert result.code == 0, result.output
    assert_in_order(result.out, STARTUP_AND_EPOCH_MESSAGES)
    assert result.out.rstrip().endswith("✓ Training completed successfully")
    assert re.search(r"Epoch 1/2: Train Acc \d+\.\d\d%, Val Loss \d+\.\d{4}, Val Acc \d+\.\d\d%, Macro F1 \d\.\d{4}",
                     result.out)
    assert re.search(r"Model parameters: \d+\.\d\dM total, \d+\.\d\dM trainable", result.out)

    out = Path(demo_config["output_dir"])
    for name in SPEC_ARTIFACTS:
        assert (out / name).is_file(), name
    bests = list(out.glob("best_model_epoch*_acc*.pth"))
    assert len(bests) == 1 and re.fullmatch(r"best_model_epoch\d+_acc\d+\.\d\d\.pth", bests[0].name)
    for path in [out / "last.pth", bests[0]]:
        torch.load(path, weights_only=True)  # plain tensors and types only

    history = read_json(out / "metrics_history.json")
    for key in HISTORY_KEYS:
        assert len(history[key]) == 2, key
    assert history["epoch"] == [1, 2]
    assert all(len(row) == 30 for row in history["per_class_f1"])
    assert history["health"] == ["healthy", "healthy"]

    meta = read_json(out / "best_model.json")
    for key in ("model_name", "num_classes", "classes", "bins", "sets", "input_size", "mean", "std",
                "interpolation", "crop_pct", "model_kwargs", "epoch", "val_acc", "manifest_hash"):
        assert key in meta, key
    assert meta["input_size"] == [3, 64, 64] and meta["num_classes"] == 30

    run = read_json(out / "run.json")
    for key in ("config", "classes", "normalisation", "device", "seed", "timings", "versions", "manifest_hash",
                "data_summary", "health", "checklist"):
        assert key in run, key
    assert set(run["versions"]) >= {"python", "torch", "torchvision", "timm", "numpy"}
    timings = run["timings"]  # where the wall clock went (docs/training.md), the report's own time included
    assert 0 < timings["ingest_seconds"] < timings["setup_seconds"] < timings["total_seconds"]
    assert timings["report_seconds"] > 0 and timings["train_seconds"] > 0
    assert run["manifest_hash"] == meta["manifest_hash"] == torch.load(out / "last.pth", weights_only=True)["manifest_hash"]
    assert [item["passed"] for item in run["checklist"] if item["id"] == "completed"] == [True]
    assert "Success criteria checklist" in (out / "report.html").read_text(encoding="utf-8")

    # The final evaluation scored the best weights, not the last epoch's.
    best = history["epoch"].index(meta["epoch"])
    report = read_json(out / "classification_report.json")
    assert report["accuracy"] == pytest.approx(history["val_acc"][best], abs=1e-9)
    cm = np.load(out / "confusion_matrix.npy")
    assert cm.shape == (30, 30) and cm.dtype == np.int64


def test_same_seed_gives_identical_metrics_on_cpu_with_any_number_of_workers(tiny_lake: Path, tmp_path: Path) -> None:
    from sustain.training.engine import train

    sections = {"model": {"drop_path_rate": 0.1}, "train": {"epochs": 2}}  # stochastic depth: the global RNG matters
    first = train(tiny_config(tiny_lake, tmp_path / "a", data={"num_workers": 0}, **sections))
    second = train(tiny_config(tiny_lake, tmp_path / "b", data={"num_workers": 1}, **sections))
    assert first.ok and second.ok
    assert deterministic_history(first.history) == deterministic_history(second.history)
    other = train(_with_seed(tiny_lake, tmp_path / "c", 7))
    assert other.history["train_loss"] != first.history["train_loss"]


def _with_seed(lake: Path, out: Path, seed: int):
    from sustain.config import config_from_dict

    raw = tiny_config_dict(lake, out, model={"drop_path_rate": 0.1})
    raw["seed"] = seed
    return config_from_dict(raw)


def test_unwritable_output_folder_fails_before_training(tiny_lake: Path, tmp_path: Path, run_cli) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    config = write_yaml(tmp_path / "c.yaml", tiny_config_dict(tiny_lake, blocker / "run"))
    result = run_cli("train", "--config", config)
    assert result.code == 2
    assert f"Output folder {blocker / 'run'} is not writable" in result.output
    assert "--output" in result.output
    assert "Random seed" not in result.output and "Creating model" not in result.output


def test_missing_data_root_fails_before_the_model_is_created(tiny_lake: Path, tmp_path: Path, run_cli) -> None:
    raw = tiny_config_dict(tiny_lake, tmp_path / "run")
    raw["data"]["sources"][0]["root"] = str(tmp_path / "not_downloaded_yet")
    result = run_cli("train", "--config", write_yaml(tmp_path / "c.yaml", raw))
    assert result.code == 2
    assert f"root not found: {tmp_path / 'not_downloaded_yet'}" in result.output
    assert "sustain data download" in result.output
    assert "Creating model" not in result.output  # a hub download must not come before this error


def test_injected_nonfinite_loss_and_grad_are_skipped_counted_and_reported(tiny_lake: Path, tmp_path: Path,
                                                                           run_cli) -> None:
    raw = tiny_config_dict(tiny_lake, tmp_path / "run", guards={"inject_nonfinite_loss": [1],
                                                                "inject_nonfinite_grad": [8]})
    result = run_cli("train", "--config", write_yaml(tmp_path / "c.yaml", raw))
    assert result.code == 0, result.output
    assert "Non-finite loss at step 1 (epoch 1): step skipped" in result.out
    assert "Non-finite gradient norm at step 8 (epoch 2): optimizer step skipped" in result.out
    assert "Health: warning (16.7% of 6 steps skipped: 1 non-finite loss, 0 non-finite grad" in result.out
    assert "0 non-finite loss, 1 non-finite grad" in result.out

    out = tmp_path / "run"
    history = read_json(out / "metrics_history.json")
    assert history["health"] == ["warning", "warning"]
    assert history["skipped"] == pytest.approx([1 / 6, 1 / 6])
    assert all(v is not None and np.isfinite(v) for v in history["val_loss"])  # the NaN never reached the weights
    totals = read_json(out / "run.json")["health"]["totals"]
    assert (totals["nonfinite_loss"], totals["nonfinite_grad"], totals["skipped"], totals["steps"]) == (1, 1, 2, 12)
    assert torch.isfinite(torch.load(out / "last.pth", weights_only=True)["model"]["head.weight"]).all()


def test_a_critical_epoch_stops_the_run_with_a_checkpoint_and_exit_code_1(tiny_lake: Path, tmp_path: Path,
                                                                          run_cli) -> None:
    raw = tiny_config_dict(tiny_lake, tmp_path / "run", train={"epochs": 3},
                           guards={"inject_nonfinite_loss": [0, 2, 4]})  # 50% of epoch 1, never 3 in a row
    result = run_cli("train", "--config", write_yaml(tmp_path / "c.yaml", raw))
    assert result.code == 1, result.output
    assert "❌ Training stopped: 50.0% of the steps of epoch 1 were skipped (critical above 20%)" in result.output
    assert "lower train.lr" in result.output
    assert "Training completed successfully" not in result.output

    out = tmp_path / "run"
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["epoch"] == 1 and last["failed"] is True
    history = read_json(out / "metrics_history.json")
    assert history["epoch"] == [1] and history["health"] == ["critical"]
    run = read_json(out / "run.json")
    assert run["status"] == "failed"
    assert [i["passed"] for i in run["checklist"] if i["id"] == "completed"] == [False]

    # Once the cause is gone, the saved checkpoint carries the run on.
    raw["guards"] = {}
    resumed = run_cli("train", "--config", write_yaml(tmp_path / "c2.yaml", raw), "--set", "train.lr=1e-4",
                      "--resume", "auto")
    assert resumed.code == 0, resumed.output
    assert "continuing from its checkpoint" in resumed.out
    assert "train.lr changed from 0.002 to 0.0001" in resumed.out
    assert max(read_json(out / "metrics_history.json")["lr"][1:]) <= 1e-4
    assert read_json(out / "metrics_history.json")["health"] == ["critical", "healthy", "healthy"]


def test_repeated_nonfinite_steps_escalate_amp_off_then_lr_halved_then_stop(tiny_lake: Path, tmp_path: Path,
                                                                            run_cli) -> None:
    raw = tiny_config_dict(tiny_lake, tmp_path / "run", train={"epochs": 2, "amp": "on"},  # bf16 autocast on CPU
                           guards={"escalate_after": 2, "inject_nonfinite_loss": [0, 1, 2, 3, 4, 5]})
    result = run_cli("train", "--config", write_yaml(tmp_path / "c.yaml", raw))
    assert result.code == 1, result.output
    assert_in_order(result.out, ["Escalation (loss): 2 non-finite steps in a row → mixed precision turned off",
                                 "Escalation (loss): 2 non-finite steps in a row → learning rate halved",
                                 "Escalation (loss): 2 non-finite steps in a row → the run stops",
                                 "❌ Training stopped: "])
    out = tmp_path / "run"
    escalations = read_json(out / "run.json")["health"]["escalations"]
    assert [(e["action"], e["step"]) for e in escalations] == [("amp_off", 1), ("lr_halved", 3), ("stop", 5)]
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["guard"]["amp_on"] is False and last["guard"]["lr_factor"] == 0.5
    assert last["failed"] is True


def test_history_json_is_valid_strict_json(tiny_lake: Path, tmp_path: Path) -> None:
    from sustain.training.engine import train

    result = train(tiny_config(tiny_lake, tmp_path / "run", train={"epochs": 1}))
    text = (tmp_path / "run" / "metrics_history.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert result.ok and result.best_checkpoint is not None and result.best_checkpoint.is_file()


def test_a_cnn_trains_channels_last_on_an_x86_cpu_and_exports_the_same_weights(tiny_lake: Path,
                                                                              tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from sustain.device import CHANNELS_LAST_CPU_ISAS
    from sustain.training.engine import train

    result = train(tiny_config(tiny_lake, tmp_path / "run", model={"name": "test_resnet", "input_size": 32},
                               train={"epochs": 1}))
    assert result.ok, result.stop_reason
    run = read_json(tmp_path / "run" / "run.json")
    assert run["device"]["channels_last"] is (torch.backends.cpu.get_cpu_capability() in CHANNELS_LAST_CPU_ISAS)
    assert run["health"]["totals"]["skipped"] == 0
    last = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    exported = load_file(str(tmp_path / "run" / "best_model.safetensors"))  # epoch 1 is both best and last
    assert exported.keys() == last["model"].keys()
    assert all(torch.equal(exported[k], last["model"][k]) for k in exported)


@pytest.mark.parametrize(("train_options", "check"), [
    ({"ema": True, "ema_decay": 0.5}, "ema"),
    ({"accum_steps": 2}, "accum"),
    ({"balance": "sampler"}, "plain"),
    ({"balance": "loss_weights"}, "plain"),
    ({"layer_decay": 0.8}, "layer_decay"),
])
def test_training_options(tiny_lake: Path, tmp_path: Path, train_options: dict, check: str) -> None:
    from sustain.training.engine import train

    result = train(tiny_config(tiny_lake, tmp_path / "run", train={"epochs": 1, **train_options}))
    assert result.ok
    last = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    if check == "ema":  # the EMA weights are saved, and they are what was validated and exported
        assert last["ema"] is not None
        assert not torch.equal(last["ema"]["head.weight"], last["model"]["head.weight"])
        from safetensors.torch import load_file

        exported = load_file(str(tmp_path / "run" / "best_model.safetensors"))
        assert torch.equal(exported["head.weight"], last["ema"]["head.weight"])
    elif check == "accum":
        assert last["updates"] == 3 and last["micro_steps"] == 6  # 6 batches, an update every 2
    elif check == "layer_decay":
        scales = {g.get("lr_scale") for g in last["optimizer"]["param_groups"]}
        assert len(scales) > 2 and max(scales) == 1.0  # the head keeps the full LR, earlier blocks less
    else:
        assert last["updates"] == 6


def test_a_file_that_vanishes_after_ingest_is_counted_as_a_data_error(tiny_lake: Path, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    import csv
    import logging
    import shutil

    from sustain.training.engine import train

    lake = tmp_path / "lake"
    shutil.copytree(tiny_lake / "tiny", lake / "tiny")
    out = tmp_path / "run"

    class DeleteOneTrainImage(logging.Handler):  # fires between ingest and the first epoch
        def emit(self, record: logging.LogRecord) -> None:
            if "Pre-training sanity check passed" in record.getMessage():
                with open(out / "manifest.csv", newline="") as fh:
                    path = next(row["path"] for row in csv.DictReader(fh) if row["split"] == "train")
                Path(path).unlink()

    hook = DeleteOneTrainImage()
    logging.getLogger("sustain.training.engine").addHandler(hook)
    try:
        with caplog.at_level(logging.INFO, logger="sustain"):
            result = train(tiny_config(lake, out, train={"epochs": 2}))
    finally:
        logging.getLogger("sustain.training.engine").removeHandler(hook)
    assert result.ok
    health = read_json(out / "run.json")["health"]
    assert [e["data_errors"] for e in health["per_epoch"]] == [1, 1]  # counted, never replaced
    assert health["totals"]["data_errors"] == 2
    assert result.history["health"] == ["healthy", "healthy"]  # its batch trained on the 7 others
    assert "Could not load" in caplog.text  # logged with its path

"""Final evaluation writers, checkpoint loading and `sustain evaluate`, on a tiny real timm model.

The helpers (a tiny checkpoint written with `sustain.training.checkpoints.save_best`, real PNG
files, a real ManifestDataset loader) live in tests/eval_helpers.py, shared with the deploy tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from eval_helpers import (
    SIZE,
    SMALL,
    export_meta,
    loader_for,
    predicted_classes,
    rows_for,
    save_tiny_checkpoint,
    tiny_model,
    write_corrupt,
    write_images,
)
from torch.utils.data import DataLoader

from sustain.data.dataset import collate_skip_failed
from sustain.data.manifest import MANIFEST_COLUMNS
from sustain.deploy.loading import load_checkpoint_model
from sustain.deploy.scoring import evaluate_checkpoint
from sustain.errors import UsageError
from sustain.evaluate import (
    collect_predictions,
    write_final_evaluation,
)
from sustain.taxonomy import build_taxonomy
from sustain.training.checkpoints import save_best, state_dict_copy


def constant_model(num_classes: int, predicted: int) -> torch.nn.Module:
    """A tiny model that predicts class `predicted` for every image: its scores are known without running it."""
    model = tiny_model(num_classes)
    with torch.no_grad():
        head = model.get_classifier()
        head.weight.zero_()
        head.bias.zero_()
        head.bias[predicted] = 10.0
    return model


def test_final_evaluation_reports_cover_every_class(tmp_path: Path):
    taxonomy = build_taxonomy()  # master_30: most classes have no val samples here
    plastic = taxonomy.resolve("PLASTIC")
    # Every image is predicted as the set's second member: no fine target is hit, the set sample is.
    model = constant_model(30, plastic[1])
    paths = write_images(tmp_path / "img", 6)
    val_targets = [(0,), (0,), (1,), (2,), plastic, (1,)]
    val_rows = rows_for(paths, val_targets, taxonomy, source="lake_a")
    val_rows[5] = rows_for([paths[5]], [(1,)], taxonomy, source="lake_b")[0]
    val_rows.append(rows_for([write_corrupt(tmp_path / "img" / "broken.png")], [(3,)], taxonomy)[0])
    test_rows = rows_for(paths[:2], [(4,), (4,)], taxonomy, split="test")
    sources = ["lake_a", "lake_b"]
    out = tmp_path / "run"

    results = write_final_evaluation(
        model, {"val": loader_for(val_rows, taxonomy, sources), "test": loader_for(test_rows, taxonomy, sources)},
        taxonomy, sources, out, "cpu", None)

    cm = np.load(out / "confusion_matrix.npy")
    assert cm.shape == (30, 30) and cm.dtype == np.int64 and cm.sum() == 5  # fine, readable samples only
    assert cm[0].sum() == 2 and cm[1].sum() == 2 and cm[2].sum() == 1
    test_cm = np.load(out / "test_confusion_matrix.npy")
    assert test_cm.shape == (30, 30) and test_cm[4].sum() == 2

    report = json.loads((out / "classification_report.json").read_text())
    assert [c for c in taxonomy.classes if c in report] == list(taxonomy.classes)
    assert report["tea_bags"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0.0}
    assert report["aerosol_cans"]["support"] == 2
    assert report["n_fine"] == 5 and report["n_set"] == 1 and report["failed"] == 1
    assert report["accuracy"] == 0.0 and report["set_accuracy"] == 1.0
    assert set(report["per_source_accuracy"]) == {"lake_a", "lake_b"}
    assert report["per_source_accuracy"]["lake_b"]["n_fine"] == 1
    assert set(report["bin_accuracy"]["per_bin"]) == set(taxonomy.bins)
    assert report["top5_accuracy"] >= report["accuracy"]
    assert 0.0 <= report["expected_calibration_error"] <= 1.0
    assert results["val"]["accuracy"] == report["accuracy"]
    assert json.loads((out / "test_classification_report.json").read_text())["tea_bags"]["support"] == 0


def test_final_evaluation_uses_the_best_weights_not_the_live_ones(tmp_path: Path):
    model = tiny_model(SMALL.num_classes)
    paths = write_images(tmp_path / "img", 8)
    # label each image with the best model's own prediction: the best epoch scores 100%
    labels = predicted_classes(model, paths, SMALL)
    run = tmp_path / "run"
    save_tiny_checkpoint(run, model, SMALL, epoch=3, val_acc=1.0)

    # later epochs make the live model worse: it now always answers a class some images lack
    wrong = next(c for c in range(SMALL.num_classes) if c != labels[0])
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[wrong] = 10.0
    loaders = {"val": loader_for(rows_for(paths, [(c,) for c in labels], SMALL), SMALL, ["lake_a"])}

    live = write_final_evaluation(model, loaders, SMALL, ["lake_a"], tmp_path / "live", "cpu")
    assert live["val"]["accuracy"] < 1.0  # the check below would catch last-epoch weights

    best = write_final_evaluation(model, loaders, SMALL, ["lake_a"], run, "cpu", checkpoint=run)
    assert best["val"]["accuracy"] == 1.0
    assert best["val"]["checkpoint"]["epoch"] == 3
    saved = json.loads((run / "classification_report.json").read_text())
    assert saved["accuracy"] == 1.0 and saved["checkpoint"]["val_acc"] == 1.0


def test_every_checkpoint_form_loads_the_same_model(tmp_path: Path):
    model = tiny_model(SMALL.num_classes, seed=1)
    pth = save_tiny_checkpoint(tmp_path / "run", model, SMALL, epoch=2, val_acc=0.25)
    x = torch.randn(2, 3, SIZE, SIZE)
    expected = model(x)
    for form in (tmp_path / "run", tmp_path / "run" / "best_model.safetensors", tmp_path / "run" / "best_model.json", pth):
        loaded = load_checkpoint_model(form)
        assert loaded.taxonomy == SMALL
        assert loaded.data_config["input_size"] == (3, SIZE, SIZE)
        torch.testing.assert_close(loaded.model(x), expected)

    (tmp_path / "run" / "best_model.json").unlink()
    with pytest.raises(UsageError, match="best_model.json"):
        load_checkpoint_model(tmp_path / "run" / "best_model.safetensors")
    with pytest.raises(UsageError, match="not found"):
        load_checkpoint_model(tmp_path / "nowhere")
    # weights from another architecture are refused with a message, not a traceback
    other = tmp_path / "other"
    save_best(other, state_dict_copy(tiny_model(3)), export_meta(SMALL))  # 3-class head, 4 classes in meta
    with pytest.raises(UsageError, match="do not fit"):
        load_checkpoint_model(other)


def test_evaluate_checkpoint_rebuilds_the_runs_split_from_its_manifest(tmp_path: Path):
    model = tiny_model(SMALL.num_classes)
    run = tmp_path / "run"
    save_tiny_checkpoint(run, model, SMALL)
    val = write_images(tmp_path / "img", 4, prefix="val")
    test = write_images(tmp_path / "img", 3, seed=5, prefix="test")
    labels = predicted_classes(model, test, SMALL)
    lines = [",".join(MANIFEST_COLUMNS)]
    lines += [f"{p},v/{p.name},lake_a,glass_jar,val,hv{i},{i},0" for i, p in enumerate(val)]
    lines += [f"{p},t/{p.name},lake_b,{SMALL.classes[c]},test,ht{i},{10 + i},0" for i, (p, c) in enumerate(zip(test, labels, strict=True))]
    (run / "manifest.csv").write_text("\n".join(lines) + "\n")

    report = evaluate_checkpoint(run / "best_model.safetensors", split="test", device="cpu")

    assert report["split"] == "test" and report["n_fine"] == 3 and report["accuracy"] == 1.0
    assert list(report["per_source_accuracy"]) == ["lake_b"]
    assert np.load(run / "eval_test_confusion_matrix.npy").shape == (4, 4)
    assert (run / "eval_test_classification_report.json").is_file()
    assert not (run / "classification_report.json").exists()  # the run's own report is never overwritten
    (run / "manifest.csv").write_text(lines[0] + "\n")
    with pytest.raises(UsageError, match="no 'val' rows"):
        evaluate_checkpoint(run, split="val", device="cpu")


def test_evaluate_cli_scores_a_labelled_folder(tmp_path: Path, run_cli):
    model = constant_model(SMALL.num_classes, SMALL.index("glass_jar"))
    run = tmp_path / "run"
    save_tiny_checkpoint(run, model, SMALL)
    data = tmp_path / "new_photos"
    jars = write_images(data / "Jars", 3)
    mixed = write_images(data / "recyclables", 2, seed=3)
    write_images(data / "junk", 1, seed=4)
    label_map = tmp_path / "map.yaml"
    label_map.write_text(yaml.safe_dump({"Jars": "glass_jar", "recyclables": "RECYCLABLE", "junk": None}))

    result = run_cli("evaluate", "--checkpoint", run, "--data", data, "--label-map", label_map)

    assert result.code == 0, result.output
    assert "📊 Per-Class Performance:" in result.out and "Macro F1" in result.out
    report = json.loads((run / "eval_data_new_photos_classification_report.json").read_text())
    assert report["n_fine"] == len(jars) and report["n_set"] == len(mixed)
    assert report["glass_jar"]["support"] == 3 and report["tin_can"]["support"] == 0
    # Every image is predicted as glass_jar: all 'Jars' are right, and so are the RECYCLABLE ones.
    assert report["accuracy"] == 1.0 and report["set_accuracy"] == 1.0

    # without the map, 'Jars' names no class: exit 2 and the folder is named
    result = run_cli("evaluate", "--checkpoint", run, "--data", data)
    assert result.code == 2 and "Jars" in result.output and "--label-map" in result.output


def test_evaluate_data_needs_no_map_entry_for_folders_named_after_a_class_or_set(tmp_path: Path, run_cli):
    """The issue's case: --label-map covers only the folders that need it; the others are class or
    set names and are labelled as such (case and '_' ignored, as ingestion does)."""
    model = tiny_model(SMALL.num_classes)
    run = tmp_path / "run"
    save_tiny_checkpoint(run, model, SMALL)
    data = tmp_path / "site_c"
    tins = write_images(data / "tin_can", 2)
    write_images(data / "Recyclable", 3, seed=3)
    write_images(data / "Jars", 1, seed=4)
    write_images(data / "banana_peel", 2, seed=5)  # mapped away by the YAML: its entry wins
    label_map = tmp_path / "map.yaml"
    label_map.write_text(yaml.safe_dump({"Jars": "glass_jar", "banana_peel": None}))

    result = run_cli("evaluate", "--checkpoint", run, "--data", data, "--label-map", label_map)

    assert result.code == 0, result.output
    report = json.loads((run / "eval_data_site_c_classification_report.json").read_text())
    assert (report["tin_can"]["support"], report["glass_jar"]["support"], report["n_set"]) == (len(tins), 1, 3)
    assert report["banana_peel"]["support"] == 0 and report["n_samples"] == 6

    write_images(data / "mystery", 1, seed=6)
    result = run_cli("evaluate", "--checkpoint", run, "--data", data, "--label-map", label_map)
    assert result.code == 2 and "['mystery']" in result.output and "add them to --label-map" in result.output


@pytest.mark.slow
def test_a_run_whose_last_epoch_is_worse_reports_the_best_epoch(tmp_path: Path):
    """End to end through the engine: the final evaluation, `sustain evaluate` and the
    report all show the best epoch's weights, not the last epoch's."""
    from engine_helpers import make_tiny_lake, tiny_config

    from sustain import train

    lake = make_tiny_lake(tmp_path / "lake", per_class=8)
    # "cosine to min_lr" with min_lr far above lr is a rising LR: epoch 1 learns the colours,
    # then an LR climbing to 0.3 wrecks the model, so the last epoch is worse than the best.
    cfg = tiny_config(lake, tmp_path / "run", train={"epochs": 3, "lr": 2e-3, "min_lr": 0.3, "warmup_epochs": 0})

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU plan never exceeds the caller's threads: one thread, one trajectory
    try:
        result = train(cfg)
    finally:
        torch.set_num_threads(threads)

    run = tmp_path / "run"
    history = json.loads((run / "metrics_history.json").read_text())
    best = result.best_epoch
    assert best < len(history["val_acc"]) and history["val_acc"][-1] < history["val_acc"][best - 1], (
        f"precondition: the last epoch must be worse than the best ({history['val_acc']})")
    report = json.loads((run / "classification_report.json").read_text())
    assert report["accuracy"] == pytest.approx(history["val_acc"][best - 1])
    assert report["checkpoint"]["epoch"] == best
    again = evaluate_checkpoint(run, split="val", device="cpu")
    assert again["accuracy"] == pytest.approx(report["accuracy"])
    assert "✓ matches the best epoch" in (run / "report.html").read_text(encoding="utf-8")


def test_final_evaluation_stores_each_images_path_beside_its_probabilities(tmp_path: Path):
    """predictions_<split>.npz keeps path ↔ probabilities aligned even when an unreadable image
    in the middle of a batch is dropped, with DataLoader workers."""
    from sustain.evaluate.gallery import load_predictions

    model = tiny_model(SMALL.num_classes)
    paths = write_images(tmp_path / "img", 7)
    broken = write_corrupt(tmp_path / "img" / "broken.png")
    ordered = [*paths[:3], broken, *paths[3:]]
    targets = [(0,), (1,), (2,), (3,), (0, 1), (3,), (1,), (2,)]
    rows = rows_for(ordered, targets, SMALL)
    loader = loader_for(rows, SMALL, ["lake_a"], batch_size=3)
    loader = DataLoader(loader.dataset, batch_size=3, shuffle=False, collate_fn=collate_skip_failed, num_workers=1)

    write_final_evaluation(model, {"val": loader, "test": None}, SMALL, ["lake_a"], tmp_path / "run", "cpu")

    store = load_predictions(tmp_path / "run" / "predictions_val.npz")
    assert not (tmp_path / "run" / "predictions_test.npz").exists()
    assert store.paths.tolist() == [str(p) for p in paths]  # the broken one left out, the rest in order
    assert store.labels.tolist() == ["glass_jar", "tin_can", "banana_peel", "RECYCLABLE", "crisp_packet",
                                     "tin_can", "banana_peel"]
    assert store.sources.tolist() == ["lake_a"] * 7 and store.classes == SMALL.classes
    alone = collect_predictions(model, loader_for(rows_for(paths, [(0,)] * 7, SMALL), SMALL, ["lake_a"]), "cpu",
                                progress=False)
    np.testing.assert_allclose(store.probs, alone.probs.numpy(), atol=1e-5)  # each row is its own image's


def test_evaluate_train_split_adds_in_sample_scores_to_the_report(tmp_path: Path, run_cli):
    from sustain.evaluate.gallery import load_predictions

    model = tiny_model(SMALL.num_classes)
    run = tmp_path / "run"
    save_tiny_checkpoint(run, model, SMALL)
    train = write_images(tmp_path / "img", 5, prefix="train")
    lines = [",".join(MANIFEST_COLUMNS)]
    lines += [f"{p},tr/{p.name},lake_a,glass_jar,train,h{i},{i},0" for i, p in enumerate(train)]
    (run / "manifest.csv").write_text("\n".join(lines) + "\n")
    val = rows_for(write_images(tmp_path / "img", 4, seed=3, prefix="val"), [(1,)] * 4, SMALL)
    write_final_evaluation(model, {"val": loader_for(val, SMALL, ["lake_a"])}, SMALL, ["lake_a"], run, "cpu")

    assert run_cli("evaluate", "--checkpoint", run, "--split", "train").code == 0
    store = load_predictions(run / "predictions_eval_train.npz")
    assert store.in_sample and store.split == "train" and len(store.paths) == 5

    assert run_cli("report", run).code == 0
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "Train scores are <b>in-sample</b>" in page and "<summary>train</summary>" in page  # its per-source table, one click away
    csv_rows = [r.split(",") for r in (run / "suspect_labels.csv").read_text().splitlines()[1:]]
    assert all(r[2] == ("in-sample" if r[1] == "train" else "held-out") for r in csv_rows)

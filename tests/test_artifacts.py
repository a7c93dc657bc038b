"""The artifact records: what is written is read back the same, and a bad file names itself."""

from __future__ import annotations

import json

import pytest

from sustain import artifacts
from sustain.artifacts import ArtifactError, History, ModelMeta


def _entry(epoch: int) -> dict:
    return {"epoch": epoch, "train_loss": 1.0, "train_acc": 0.5, "val_loss": float("nan"), "val_acc": 0.6,
            "val_macro_f1": 0.55, "val_set_acc": None, "val_samples": 10, "lr": 1e-3, "skipped": 0.0,
            "health": "healthy", "epoch_seconds": 1.5, "images_per_second": 100.0, "per_class_f1": [0.5, 0.6]}


def test_history_round_trip_stores_non_finite_as_null(tmp_path):
    h = History()
    h.append(_entry(1))
    h.append(_entry(2))
    h.write(tmp_path)
    raw = json.loads((tmp_path / artifacts.HISTORY).read_text())
    assert raw["val_loss"] == [None, None]  # NaN is not JSON
    back = History.read(tmp_path)
    assert back == h and len(back) == 2
    assert "epoch_seconds" not in back.without_timings()


def test_unknown_and_missing_keys_name_the_file_and_the_keys(tmp_path):
    meta = {"model_name": "test_vit", "num_classes": 2, "classes": ["a", "b"], "input_size": [3, 32, 32],
            "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "squash"}
    (tmp_path / artifacts.EXPORT_META).write_text(json.dumps({**meta, "colour": 1}))
    with pytest.raises(ArtifactError, match=r"best_model\.json: unknown key\(s\) colour"):
        ModelMeta.read(tmp_path)
    del meta["crop_pct"]
    (tmp_path / artifacts.EXPORT_META).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"missing key\(s\) crop_pct"):
        ModelMeta.read(tmp_path)


def test_model_meta_carries_the_eval_transform(tmp_path):
    meta = ModelMeta(model_name="test_vit", num_classes=2, classes=["a", "b"], input_size=[3, 32, 32],
                     mean=[0.1, 0.2, 0.3], std=[0.5] * 3, interpolation="bilinear", crop_pct=0.875, crop_mode="squash")
    meta.write(tmp_path)
    cfg = ModelMeta.read(tmp_path).data_config()
    assert cfg["crop_mode"] == "squash" and cfg["input_size"] == (3, 32, 32) and cfg["mean"] == (0.1, 0.2, 0.3)

"""The crossval fold plans (sustain.data.folds) on a real ingested lake, the fold hand-over to
ingestion (data.split.assignment), and the summary's intervals. No training: fast."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from crossval_helpers import two_source_config, two_source_lake
from engine_helpers import TINY_CLASSES

from sustain.config import config_from_dict
from sustain.data.folds import EXCLUDED, kfold_plan, source_plan, write_assignment
from sustain.data.lake import ingest
from sustain.errors import ConfigError, UsageError
from sustain.evaluate.crossval import mean_interval, merge_oof, wilson
from sustain.evaluate.gallery import SamplePredictions
from sustain.taxonomy import build_taxonomy


@pytest.fixture(scope="module")
def lake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return two_source_lake(tmp_path_factory.mktemp("cv_lake"))


def _ingest(root: Path, out: Path, **data):
    raw = two_source_config(root, out)
    raw["data"].update(data)
    cfg = config_from_dict(raw)
    return ingest(cfg, build_taxonomy(**cfg.taxonomy.model_dump()), log_summary=False)


@pytest.fixture(scope="module")
def lake(lake_root: Path, tmp_path_factory: pytest.TempPathFactory):
    lake = _ingest(lake_root, tmp_path_factory.mktemp("out"))
    sizes = np.bincount([r.group for r in lake.rows])
    assert (sizes > 1).sum() == 2 * len(TINY_CLASSES)  # the resized copies are near duplicates of tiny's images
    return lake


def test_kfold_folds_are_disjoint_cover_the_lake_and_keep_groups_whole(lake) -> None:
    plan = kfold_plan(lake.rows, 3, seed=7, fraction=0.1 / 0.9)
    fold_of = plan.test_fold()
    assert (fold_of >= 0).all()  # every image is scored by one fold ...
    assert sorted(np.bincount(fold_of).tolist()) == sorted(f.count("test") for f in plan.folds)  # ... exactly once
    folds_of_group = defaultdict(set)
    for row, f in zip(lake.rows, fold_of, strict=True):
        folds_of_group[row.group].add(int(f))
    assert all(len(f) == 1 for f in folds_of_group.values())  # no near-duplicate group spans two folds
    for fold in plan.folds:
        assert set(fold.splits) == {"train", "val", "test"}
        by_split = defaultdict(set)
        for row, split in zip(lake.rows, fold.splits, strict=True):
            by_split[split].add(row.group)
        assert not by_split["train"] & by_split["test"] and not by_split["val"] & by_split["test"]
        assert not by_split["train"] & by_split["val"]  # val is carved by group too
    # stratified: each class (14 images in 12 groups) is spread over the 3 folds
    for cls in TINY_CLASSES:
        counts = np.bincount([f for r, f in zip(lake.rows, fold_of, strict=True) if r.label == cls], minlength=3)
        assert counts.min() >= 3, (cls, counts)
    assert kfold_plan(lake.rows, 3, seed=7, fraction=0.1 / 0.9) == plan  # the same plan in every process


def test_kfold_refuses_more_folds_than_groups(lake) -> None:
    with pytest.raises(UsageError, match="--folds 500: the lake has only"):
        kfold_plan(lake.rows, 500, seed=0, fraction=0.1)


def test_leave_one_source_out_never_trains_on_a_held_out_images_near_duplicate(lake) -> None:
    plan = source_plan(lake.rows, lake.sources, seed=0, fraction=0.1, min_images=10)
    assert [f.held_out for f in plan.folds] == ["tiny", "other"]
    for fold in plan.folds:
        held_groups = {r.group for r, s in zip(lake.rows, fold.splits, strict=True) if s == "test"}
        trained = [r for r, s in zip(lake.rows, fold.splits, strict=True) if s in ("train", "val")]
        assert trained and not {r.group for r in trained} & held_groups
        assert all(r.source != fold.held_out for r in trained)
        assert fold.near_duplicates_removed == 2 * len(TINY_CLASSES)  # the copies (or the originals), counted
        assert fold.count("test") == sum(r.source == fold.held_out for r in lake.rows)


def test_a_class_no_training_source_has_is_excluded_from_the_held_out_score(lake_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "lake"
    shutil.copytree(lake_root / "tiny", root / "tiny")
    for cls in TINY_CLASSES[1:]:  # `other` has no red
        shutil.copytree(lake_root / "other" / cls, root / "other" / cls)
    lake = _ingest(root, tmp_path / "out")
    plan = source_plan(lake.rows, lake.sources, seed=0, fraction=0.1, min_images=10)
    tiny = plan.folds[0]
    assert tiny.held_out == "tiny" and tiny.unseen_class_images == {"red": 6}
    red = [s for r, s in zip(lake.rows, tiny.splits, strict=True) if r.source == "tiny" and r.label == "red"]
    assert red == [EXCLUDED] * 6
    assert plan.folds[1].unseen_class_images == {}


def test_too_small_sources_are_skipped_and_reported(lake) -> None:
    plan = source_plan(lake.rows, lake.sources, seed=0, fraction=0.1, min_images=40)
    assert [f.held_out for f in plan.folds] == ["other"] and plan.skipped_sources == {
        "tiny": {"fine_images": 36, "reason": "fewer than 40 fine-labelled images"}}
    with pytest.raises(UsageError, match="(?s)no source can be held out.*lower --min-images"):
        source_plan(lake.rows, lake.sources, seed=0, fraction=0.1, min_images=1000)


def test_a_source_the_others_cannot_teach_is_skipped_and_said_why(lake_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "lake"
    for cls in TINY_CLASSES[:3]:
        shutil.copytree(lake_root / "tiny" / cls, root / "tiny" / cls)
    for cls in TINY_CLASSES[3:]:  # `other` shares no class with `tiny`
        shutil.copytree(lake_root / "other" / cls, root / "other" / cls)
    lake = _ingest(root, tmp_path / "out")
    with pytest.raises(UsageError, match="no class of its images has a fine-labelled image in the other sources"):
        source_plan(lake.rows, lake.sources, seed=0, fraction=0.1, min_images=10)


def test_ingest_takes_a_folds_splits_from_the_assignment_file(lake, lake_root: Path, tmp_path: Path) -> None:
    plan = source_plan(lake.rows, lake.sources, seed=0, fraction=0.1, min_images=10)
    path = write_assignment(tmp_path / "split_assignment.csv", lake.rows, plan.folds[1])
    fold_lake = _ingest(lake_root, tmp_path / "out", split={"assignment": str(path)})
    assert [r.split for r in fold_lake.rows] == list(plan.folds[1].splits)
    assert fold_lake.data_summary.splits["test"] == plan.folds[1].count("test")
    assert {r.source for r in fold_lake.split("test")} == {"other"}

    path.write_text("content_hash,split\nabc,train\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data.split.assignment.*84 of the lake's 84 images are not in"):
        _ingest(lake_root, tmp_path / "out", split={"assignment": str(path)})


def test_intervals() -> None:
    assert wilson(0, 0) is None
    lo, hi = wilson(45, 50)
    assert lo == pytest.approx(0.7864, abs=1e-4) and hi == pytest.approx(0.9565, abs=1e-4)
    stat = mean_interval([0.8, 0.9, 0.85, None])
    assert stat["n_folds"] == 3 and stat["mean"] == pytest.approx(0.85) and stat["std"] == pytest.approx(0.05)
    assert stat["ci95"] == pytest.approx([0.85 - 4.302653 * 0.05 / 3 ** 0.5, 0.85 + 4.302653 * 0.05 / 3 ** 0.5])
    assert mean_interval([0.7])["ci95"] is None


def test_merging_folds_that_score_one_image_twice_is_refused() -> None:
    def store(paths):
        n = len(paths)
        return SamplePredictions("test", ("a", "b"), np.array(paths), np.array(["s"] * n), np.array(["a"] * n),
                                 np.full((n, 2), 0.5, dtype=np.float32), np.eye(2, dtype=bool)[[0] * n])

    merged, fold = merge_oof([(0, store(["x", "y"])), (1, store(["z"]))])
    assert list(merged.paths) == ["x", "y", "z"] and fold.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="scored by more than one fold, e.g. y"):
        merge_oof([(0, store(["x", "y"])), (1, store(["y"]))])


def test_crossval_refuses_a_fold_it_does_not_have_and_a_fixed_assignment(lake_root: Path, tmp_path: Path,
                                                                         write_config, run_cli) -> None:
    config = write_config(two_source_config(lake_root, tmp_path / "out"))
    result = run_cli("crossval", "--config", config, "--folds", "2", "--fold", "2")
    assert result.code == 2 and "--fold 2: this scheme has folds 0 to 1" in result.output
    assert "Epoch" not in result.output
    result = run_cli("crossval", "--config", config, "--set", "data.split.assignment=x.csv")
    assert result.code == 2 and "data.split.assignment" in result.output and "remove this key" in result.output
    result = run_cli("crossval", "--config", config, "--set", "data.split.holdout_sources=[other]")
    assert result.code == 2 and "data.split.holdout_sources" in result.output and "--by source" in result.output
    result = run_cli("crossval", "--config", config, "--set", "data.split.val=0", "--set", "data.split.test=0.2")
    assert result.code == 2 and "data.split.val" in result.output


def test_the_mean_interval_stays_within_0_and_1() -> None:
    assert mean_interval([0.02, 0.15, 0.05])["ci95"][0] == 0.0
    assert mean_interval([0.99, 0.9, 1.0])["ci95"][1] == 1.0

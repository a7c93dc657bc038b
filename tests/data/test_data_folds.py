"""The crossval fold plans (sustain.data.folds) on a real ingested lake, the fold hand-over to
ingestion (data.split.assignment), and the summary's intervals. No training: fast."""

from __future__ import annotations

import shutil
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from crossval_helpers import two_source_config, two_source_lake
from engine_helpers import TINY_CLASSES

from sustain.config import config_from_dict
from sustain.data.folds import (
    EXCLUDED,
    Fold,
    FoldPlan,
    assigned_splits,
    folds_text,
    kfold_plan,
    source_plan,
    val_fraction,
    write_assignment,
)
from sustain.data.lake import ingest
from sustain.data.manifest import ManifestRow
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


# ----------------------------------------------------------------- the plans on small synthetic rows, no ingest

_CLASSES = ("a", "b", "c")


def _rows(spec: list[tuple[str, str, int]]) -> list[ManifestRow]:
    """One row per (source, label, group); content hashes h0, h1, … in order."""
    return [ManifestRow(path=f"/lake/{source}/{i}.jpg", source=source, label=label,
                        targets=tuple(_CLASSES.index(c) for c in label.split("|")), split="train",
                        content_hash=f"h{i}", group=group)
            for i, (source, label, group) in enumerate(spec)]


def _singletons(counts: dict[str, int], source: str = "s") -> list[ManifestRow]:
    """`counts[label]` images per label, each its own near-duplicate group."""
    labels = [label for label, n in counts.items() for _ in range(n)]
    return _rows([(source, label, g) for g, label in enumerate(labels)])


def test_val_fraction_is_the_val_to_train_ratio_and_a_zero_val_is_refused() -> None:
    assert val_fraction(0.7, 0.1) == pytest.approx(0.125) and val_fraction(0.6, 0.2) == pytest.approx(0.25)
    with pytest.raises(ConfigError) as err:
        val_fraction(0.8, 0.0)
    assert err.value.key == "data.split.val" and str(err.value) == (
        "Config error at 'data.split.val': crossval carves a val part for early stopping from each fold's "
        "training pool: set data.split.val above 0 (e.g. 0.1)")


def test_kfold_names_its_folds_and_accepts_as_many_folds_as_groups() -> None:
    plan = kfold_plan(_singletons({"a": 6, "b": 6}), 3, seed=0, fraction=0.25)
    assert plan.scheme == "kfold" and plan.skipped_sources == {}
    assert [(f.index, f.name, f.held_out) for f in plan.folds] == [(0, "fold_0", 0), (1, "fold_1", 1),
                                                                    (2, "fold_2", 2)]
    three = kfold_plan(_singletons({"a": 3}), 3, seed=0, fraction=0.25)  # k == the number of groups
    assert [f.count("test") for f in three.folds] == [1, 1, 1]


@pytest.mark.parametrize(("rows", "k", "message"), [
    (_singletons({"a": 4}), 1, "--folds 1: cross-validation needs at least 2 folds\n  → use --folds 5 (the default)"),
    (_rows([("s", "a", 0)] * 3), 2, "--folds 2: the lake has only 1 near-duplicate groups (3 images)\n"
                                    "  → use --folds 2 or fewer, or add images"),
    (_singletons({"a": 9, "b": 9}), 20, "--folds 20: the lake has only 18 near-duplicate groups (18 images)\n"
                                        "  → use --folds 18 or fewer, or add images"),
    (_singletons({"a": 2, "b": 2, "c": 2}), 3, "--folds 3: the lake's largest class has only 2 images\n"
                                               "  → use --folds 2 or fewer, or add images"),
    (_rows([("s", "a", 0)] * 3 + [("s", "a", 1)] * 3), 2,
     "a fold's training pool holds 3 images in one near-duplicate group: nothing is left to validate on\n"
     "  → add images or sources"),
])
def test_kfold_errors_name_the_flag_and_the_fix(rows, k: int, message: str) -> None:
    with pytest.raises(UsageError) as err:
        kfold_plan(rows, k, seed=0, fraction=0.25)
    assert str(err.value) == message


@pytest.mark.parametrize(("fraction", "val_range"), [(0.5, (9, 11)), (0.25, (4, 6)), (0.125, (2, 3))])
def test_the_val_part_is_the_configured_share_of_each_training_pool(fraction: float, val_range) -> None:
    plan = kfold_plan(_singletons({"a": 20, "b": 20}), 2, seed=0, fraction=fraction)
    for fold in plan.folds:  # a pool of 20: round(1 / fraction) grouped folds, the first is val
        assert val_range[0] <= fold.count("val") <= val_range[1], (fraction, fold.count("val"))
        assert fold.count("train") + fold.count("val") == 20


def test_a_pool_of_few_groups_is_split_in_as_many_parts_as_it_has_groups() -> None:
    rows = _rows([("s", "ab"[g % 2], g) for g in range(4) for _ in range(3)])  # 4 groups of 3
    plan = kfold_plan(rows, 2, seed=0, fraction=0.1)  # val wants 10 parts; each pool has 2 groups
    assert [(f.count("train"), f.count("val"), f.count("test")) for f in plan.folds] == [(3, 3, 6), (3, 3, 6)]


def test_a_class_too_small_for_the_val_parts_warns_nobody() -> None:
    rows = _singletons({"a": 8, "b": 2})  # each pool keeps one b: fewer than the 4 val parts
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = kfold_plan(rows, 2, seed=0, fraction=0.25)
    assert len(plan.folds) == 2


def test_the_seed_decides_the_folds_and_any_seed_works() -> None:
    rows = _singletons({"a": 8, "b": 8, "c": 8})
    plans = [kfold_plan(rows, 3, seed=s, fraction=0.25) for s in range(5)]
    assert kfold_plan(rows, 3, seed=2, fraction=0.25) == plans[2]
    assert len({tuple(p.test_fold()) for p in plans}) >= 3  # the test parts move with the seed
    assert kfold_plan(rows, 3, seed=2**32 + 1, fraction=0.25) == plans[1]  # numpy's seeds stop at 2**32
    two = rows + _rows([("t", label, 100 + i) for i, label in enumerate("abc" * 8)])
    carved = [source_plan(two, ["s", "t"], seed=s, fraction=0.25, min_images=5) for s in range(5)]
    assert len({tuple(f.splits for f in p.folds) for p in carved}) >= 3  # the val parts move with the seed too
    assert source_plan(two, ["s", "t"], seed=2**32 + 3, fraction=0.25, min_images=5) == carved[3]


def _sources_lake() -> list[ManifestRow]:
    spec = [("odd", "c", g) for g in range(5)]  # class c: no other source can teach it
    spec += [("few", "a", 10 + g) for g in range(4)]
    spec += [("web cam/α", "ab"[g % 2], 20 + g) for g in range(8)]
    spec += [("lab-2.x_y", "ab"[g % 2], 30 + g) for g in range(5)] + [("lab-2.x_y", "a|b", 40)]
    return _rows(spec)


def test_source_plan_names_skips_and_scores_each_source() -> None:
    rows = _sources_lake()
    plan = source_plan(rows, ["odd", "few", "web cam/α", "lab-2.x_y"], seed=0, fraction=0.25, min_images=5)
    assert plan.scheme == "source"
    assert [(f.index, f.name, f.held_out) for f in plan.folds] == [
        (0, "source_web_cam_α", "web cam/α"), (1, "source_lab-2.x_y", "lab-2.x_y")]
    assert plan.skipped_sources == {  # planning goes on past a skipped source; a set label is not fine
        "odd": {"fine_images": 5, "reason": "no class of its images has a fine-labelled image in the other sources"},
        "few": {"fine_images": 4, "reason": "fewer than 5 fine-labelled images"}}
    assert plan.test_fold().tolist() == [-1] * 9 + [0] * 8 + [1] * 6  # -1: no fold scores it


def test_a_fold_with_a_single_training_image_is_kept() -> None:
    rows = _rows([("s1", "a", 0), ("s1", "a", 1), ("s2", "a", 2), ("s2", "a", 3)])
    plan = source_plan(rows, ["s1", "s2"], seed=0, fraction=0.5, min_images=2)
    assert [(f.count("train"), f.count("val"), f.count("test")) for f in plan.folds] == [(1, 1, 2), (1, 1, 2)]


def test_source_plan_errors_name_the_flag_and_the_fix() -> None:
    with pytest.raises(UsageError) as err:
        source_plan(_singletons({"a": 30}), ["s"], seed=0, fraction=0.25)
    assert str(err.value) == ("--by source needs at least two sources with images\n"
                              "  → enable more sources in data.sources")
    with pytest.raises(UsageError) as err:
        source_plan(_sources_lake(), ["odd", "few"], seed=0, fraction=0.25, min_images=5)
    assert err.value.message.startswith("--by source: no source can be held out: {'odd': {'fine_images': 5")
    assert err.value.hint == "lower --min-images, or add sources that share classes"


def test_a_plan_without_folds_scores_no_row() -> None:
    assert FoldPlan("kfold", ()).test_fold().shape == (0,)


def test_the_folds_and_assignment_files_byte_for_byte(tmp_path: Path) -> None:
    rows = _rows([("s", "a", 0), ("s", "b", 1), ("t", "a|b", 1)])
    assert folds_text(rows, np.array([0, -1, 2])) == ("path,source,group,fold,label\n/lake/s/0.jpg,s,0,0,a\n"
                                                      "/lake/s/1.jpg,s,1,,b\n/lake/t/2.jpg,t,1,2,a|b\n")
    fold = Fold(0, "fold_0", 0, ("train", EXCLUDED, "test"))
    path = write_assignment(tmp_path / "split_assignment.csv", rows, fold)
    assert path.read_bytes() == b"content_hash,split\nh0,train\nh1,excluded\nh2,test\n"
    assert assigned_splits(path, ["h2", "h0", "h1"]) == ["test", "train", EXCLUDED]
    with pytest.raises(ValueError):  # a fold of another lake is refused, not cut to fit
        write_assignment(tmp_path / "short.csv", rows, Fold(0, "fold_0", 0, ("train",)))
    with pytest.raises(ValueError):
        folds_text(rows, np.array([0]))


@pytest.mark.parametrize(("text", "problem"), [
    (None, "cannot read {path}: "),
    ("hash,split\nh0,train\n", "{path} is not a split assignment (columns content_hash,split)"),
    ("content_hash,split\nh0,training\nh1,ood\n",
     "{path} holds unknown splits ['ood', 'training']; use train, val, test, excluded"),
    ("content_hash,split\nh0,train\n", "1 of the lake's 2 images are not in {path}: the lake changed since the "
                                       "folds were planned; rerun `sustain crossval` without --resume"),
])
def test_the_assignment_readers_errors_name_the_key_and_the_file(tmp_path: Path, text, problem: str) -> None:
    path = tmp_path / "split_assignment.csv"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        assigned_splits(path, ["h0", "h1"])
    assert err.value.key == "data.split.assignment"
    assert str(err.value).startswith(f"Config error at 'data.split.assignment': {problem.format(path=path)}")

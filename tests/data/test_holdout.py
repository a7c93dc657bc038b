"""data.split.holdout_sources: a source never trained on, scored beside the in-domain test."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import TINY_CLASSES, make_tiny_lake, one_thread, read_json, tiny_config_dict  # noqa: F401
from PIL import Image

from sustain.config import config_from_dict
from sustain.data.split import hold_out
from sustain.errors import ConfigError
from sustain.evaluate.shift import shift_rows, wilson_interval

SITE_B = {"name": "site_b", "root": "site_b", "label_map": "identity"}


def two_source_dict(tmp_path: Path, **split) -> dict:
    raw = tiny_config_dict(tmp_path / "lake", tmp_path / "run")
    raw["data"]["sources"].append(dict(SITE_B))
    raw["data"]["split"] = split
    return raw


@pytest.mark.parametrize(("held", "needle"), [
    (["site_c"], "names no source in data.sources: ['site_c']"),
    (["tiny", "site_b"], "holds out every enabled source"),
    (["site_b", "site_b"], "repeats ['site_b']"),
])
def test_a_bad_holdout_source_is_a_config_error_naming_the_key(tmp_path: Path, held: list[str], needle: str):
    with pytest.raises(ConfigError) as info:
        config_from_dict(two_source_dict(tmp_path, holdout_sources=held))
    assert info.value.key == "data.split.holdout_sources" and needle in str(info.value)


def test_an_unknown_holdout_source_error_lists_the_source_names(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        config_from_dict(two_source_dict(tmp_path, holdout_sources=["Site_B"]))
    assert "source names: tiny, site_b" in (info.value.hint or "")


def test_a_disabled_holdout_source_is_refused(tmp_path: Path):
    raw = two_source_dict(tmp_path, holdout_sources=["site_b"])
    raw["data"]["sources"][1]["enabled"] = False
    with pytest.raises(ConfigError, match="disabled"):
        config_from_dict(raw)


def test_hold_out_removes_other_sources_near_duplicates_of_held_out_images():
    sources = ["a", "a", "b", "b", "a", "c"]
    groups = [0, 1, 2, 1, 3, 2]  # item 1 (a) copies item 3 (b); item 5 (c) copies item 2 (b)
    held = hold_out(sources, groups, ["b"])
    assert held.ood.tolist() == [False, False, True, True, False, False]
    assert held.removed.tolist() == [False, True, False, False, False, True]
    assert not hold_out(sources, groups, []).ood.any()


def test_shift_rows_put_each_held_out_source_beside_in_domain_test_with_an_interval():
    test = {"accuracy": 0.9, "n_fine": 200, "set_accuracy": None, "n_set": 0}
    ood = {"per_source_accuracy": {"site_b": {"acc": 0.5, "n_fine": 40, "set_acc": None, "n_set": 0}}}
    rows = shift_rows(test, ood)
    assert [(r.name, r.held_out, r.n_fine) for r in rows] == [("in-domain test", False, 200), ("site_b", True, 40)]
    assert rows[1].gap == pytest.approx(-0.4)
    lo, hi = rows[1].interval
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.30, abs=0.02)  # n=40: about ±15 points
    assert wilson_interval(0, 0) is None and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert shift_rows(test, None) == []


def write_site_b(lake: Path, seed: int = 7) -> Path:
    """A second source: the same classes, tinted and inverted, so it looks unlike the first."""
    make_tiny_lake(lake / "_b", per_class=4, seed=seed)
    for png in sorted((lake / "_b" / "tiny").rglob("*.png")):
        out = lake / "site_b" / png.parent.name / png.name
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - np.asarray(Image.open(png))).save(out)
    return lake / "site_b"


@pytest.mark.slow
def test_a_held_out_source_is_scored_beside_test_and_never_trained_on(tmp_path: Path, run_cli):
    from sustain import train
    from sustain.deploy.model_card import build_model_card

    lake = make_tiny_lake(tmp_path / "lake", per_class=8)
    site_b = write_site_b(lake)
    # a re-encoded copy of a site_b image inside the training source: it must leave the lake
    copy = lake / "tiny" / "red" / "copy_of_site_b.jpg"
    Image.open(site_b / "red" / "img_000.png").save(copy, quality=95)
    raw = two_source_dict(tmp_path, holdout_sources=["site_b"])
    raw["train"].update(epochs=1)
    cfg = config_from_dict(raw)

    result = train(cfg)

    out = result.output_dir
    with (out / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    ood = [r for r in rows if r["split"] == "ood"]
    assert {r["source"] for r in ood} == {"site_b"} and len(ood) == 4 * len(TINY_CLASSES)
    assert all(r["split"] != "ood" for r in rows if r["source"] == "tiny")
    assert str(copy) not in {r["path"] for r in rows}  # the near duplicate is gone, not trained on
    ood_groups = {r["group"] for r in ood}
    assert not [r for r in rows if r["split"] != "ood" and r["group"] in ood_groups]
    summary = read_json(out / "data_summary.json")
    assert summary["splits"]["ood"] == len(ood) and summary["holdout"]["near_duplicates_removed"] == 1
    assert summary["holdout"]["removed_examples"] == [str(copy)]

    report = read_json(out / "ood_classification_report.json")
    assert report["split"] == "ood" and report["n_fine"] == len(ood)
    assert list(report["per_source_accuracy"]) == ["site_b"]
    assert (out / "ood_confusion_matrix.npy").is_file() and (out / "predictions_ood.npz").is_file()
    assert read_json(out / "run.json")["final_evaluation"]["ood"]["n_fine"] == len(ood)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out), size_guidance={"scalars": 0})
    events.Reload()
    assert events.Scalars("final.ood.source_acc.site_b")[-1].value == pytest.approx(report["accuracy"], abs=1e-6)
    again = run_cli("evaluate", "--checkpoint", out, "--split", "ood")  # the same weights score them again
    assert again.code == 0, again.output
    assert read_json(out / "eval_ood_classification_report.json")["accuracy"] == pytest.approx(report["accuracy"])

    page = (out / "report.html").read_text(encoding="utf-8").replace("<wbr>", "")  # names may break at "_"
    assert "In-domain test and held-out sources" in page and "site_b (held out)" in page
    card = build_model_card(read_json(out / "best_model.json"), {
        "test_report": read_json(out / "test_classification_report.json"), "ood_report": report})
    assert "| site_b (held out) | 24 |" in card and "| in-domain test |" in card

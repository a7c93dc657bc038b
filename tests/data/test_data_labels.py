"""Label resolution (SPEC §4): deepest-first, ignore_dirs, key normalisation, globs, identity, sets, null."""

from __future__ import annotations

import pytest

from sustain.config import SourceConfig
from sustain.data.labels import compile_label_map, normalize_key, resolve_label
from sustain.errors import ConfigError
from sustain.taxonomy import build_taxonomy

TAX = build_taxonomy()


def idx(*names: str) -> tuple[int, ...]:
    return tuple(sorted(TAX.index(n) for n in names))


def compile_map(label_map, **kw):
    return compile_label_map(SourceConfig(name="src", root="r", label_map=label_map, **kw), TAX)


def test_identity_maps_class_folders_through_ignored_layout_folders() -> None:
    lm = compile_map("identity")
    # master_30 layout: images/images/<class>/{default,real_world}/
    res = resolve_label(("images", "images", "paper_cups", "real_world"), lm)
    assert (res.kind, res.targets) == ("label", idx("paper_cups"))
    assert res.folder == 2
    # identity knows classes only: a set name as a folder stays unmapped
    assert resolve_label(("PLASTIC",), lm).kind == "unmapped"


def test_deepest_mapped_folder_wins() -> None:
    lm = compile_map({"plastic": "PLASTIC", "bottle": "plastic_water_bottles"})
    assert resolve_label(("plastic", "bottle"), lm).targets == idx("plastic_water_bottles")
    assert resolve_label(("plastic", "unknown_sub"), lm).targets == TAX.resolve("PLASTIC")
    assert resolve_label(("bottle", "plastic"), lm).targets == TAX.resolve("PLASTIC")


def test_keys_ignore_case_and_separators() -> None:
    lm = compile_map({"Brown-Glass": "GLASS", "white glass": "glass_food_jars"})
    assert normalize_key("Brown-Glass") == normalize_key("brown_glass") == normalize_key("BROWN GLASS")
    for folder in ("brown_glass", "BROWN GLASS", "brown-glass"):
        assert resolve_label((folder,), lm).targets == TAX.resolve("GLASS")
    assert resolve_label(("White-Glass",), lm).targets == idx("glass_food_jars")


def test_glob_keys_and_exact_keys_take_precedence() -> None:
    lm = compile_map({"bottle-*": ["plastic_water_bottles", "plastic_soda_bottles"],
                      "bottle-milk": "plastic_food_containers"})
    assert resolve_label(("bottle", "bottle-blue-5l"), lm).targets == idx("plastic_water_bottles", "plastic_soda_bottles")
    assert resolve_label(("Bottle_Dark",), lm).key == "bottle-*"
    assert resolve_label(("bottle-milk",), lm).targets == idx("plastic_food_containers")
    assert resolve_label(("bottles",), lm).kind == "unmapped"


def test_set_labels_lists_and_null() -> None:
    lm = compile_map({"r": ["PLASTIC", "METAL", "cardboard_boxes"], "trash": None, "o": "ORGANIC"})
    res = resolve_label(("TRAIN", "R"), lm)
    assert res.targets == tuple(sorted(set(TAX.resolve("PLASTIC")) | set(TAX.resolve("METAL")) | {TAX.index("cardboard_boxes")}))
    assert resolve_label(("o",), lm).targets == idx("coffee_grounds", "eggshells", "food_waste", "tea_bags")
    dropped = resolve_label(("trash",), lm)
    assert (dropped.kind, dropped.targets, dropped.key) == ("drop", None, "trash")


def test_ignore_dirs_are_skipped_and_reported_unmapped_at_the_deepest_real_folder() -> None:
    lm = compile_map({"plastic": "PLASTIC"})
    assert resolve_label(("plastic", "train", "images"), lm).targets == TAX.resolve("PLASTIC")
    res = resolve_label(("dataset", "battery", "train"), lm)
    assert res.kind == "unmapped" and res.folder == 1  # 'battery' is what the user must map
    assert resolve_label(("train", "test"), lm) == resolve_label((), lm)
    assert resolve_label((), lm).folder is None
    # custom ignore_dirs replace the default list
    lm2 = compile_map({"*": "shoes"}, ignore_dirs=["junk"])
    assert resolve_label(("junk",), lm2).kind == "unmapped"
    assert resolve_label(("train",), lm2).targets == idx("shoes")


@pytest.mark.parametrize("label_map, key, fragment", [
    ({"paper": "PAPERS"}, "data.sources[src].label_map.paper", "'PAPERS'"),
    ({"x": ["shoes", "sneakers"]}, "data.sources[src].label_map.x", "'sneakers'"),
    ({"x": []}, "data.sources[src].label_map.x", "empty list"),
    ({"Glass": "GLASS", "glass": "shoes"}, "data.sources[src].label_map.glass", "same folders"),
    ({"train": "shoes"}, "data.sources[src].ignore_dirs", "'train'"),
])
def test_bad_label_maps_name_the_key(label_map, key, fragment) -> None:
    with pytest.raises(ConfigError) as info:
        compile_map(label_map)
    assert info.value.key == key
    assert fragment in str(info.value)


def test_unknown_class_error_suggests_the_close_name() -> None:
    with pytest.raises(ConfigError, match="did you mean 'clothing'"):
        compile_map({"clothes": "clothng"})


def test_identity_conflicting_with_ignore_dirs_is_an_error() -> None:
    tax = build_taxonomy(classes=["cat", "images"], bins=None)
    with pytest.raises(ConfigError, match="ignore_dirs"):
        compile_label_map(SourceConfig(name="s", root="r", label_map="identity"), tax)

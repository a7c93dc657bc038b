"""The taxonomy: frozen master_30 order, bins, sets (SPEC §3–4), custom taxonomies."""

from __future__ import annotations

import pytest

from sustain.config import TaxonomyConfig
from sustain.errors import ConfigError
from sustain.taxonomy import MASTER_30, build_taxonomy

# Copied from SPEC §3 on purpose: the index order is part of every checkpoint.
SPEC_MASTER_30 = [
    "aerosol_cans", "aluminum_food_cans", "aluminum_soda_cans", "cardboard_boxes",
    "cardboard_packaging", "clothing", "coffee_grounds", "disposable_plastic_cutlery",
    "eggshells", "food_waste", "glass_beverage_bottles", "glass_cosmetic_containers",
    "glass_food_jars", "magazines", "newspaper", "office_paper", "paper_cups",
    "plastic_cup_lids", "plastic_detergent_bottles", "plastic_food_containers",
    "plastic_shopping_bags", "plastic_soda_bottles", "plastic_straws",
    "plastic_trash_bags", "plastic_water_bottles", "shoes", "steel_food_cans",
    "styrofoam_cups", "styrofoam_food_containers", "tea_bags",
]

SPEC_BINS = {
    "recycle": {
        "aluminum_food_cans", "aluminum_soda_cans", "cardboard_boxes", "cardboard_packaging",
        "glass_beverage_bottles", "glass_cosmetic_containers", "glass_food_jars", "magazines",
        "newspaper", "office_paper", "plastic_cup_lids", "plastic_detergent_bottles",
        "plastic_food_containers", "plastic_soda_bottles", "plastic_water_bottles", "steel_food_cans",
    },
    "compost": {"coffee_grounds", "eggshells", "food_waste", "tea_bags"},
    "landfill": {
        "disposable_plastic_cutlery", "paper_cups", "plastic_straws", "plastic_trash_bags",
        "styrofoam_cups", "styrofoam_food_containers",
    },
    "special": {"aerosol_cans", "plastic_shopping_bags"},
    "donate": {"clothing", "shoes"},
}

SPEC_SETS = {
    "PLASTIC": {
        "plastic_cup_lids", "plastic_detergent_bottles", "plastic_food_containers",
        "plastic_shopping_bags", "plastic_soda_bottles", "plastic_straws", "plastic_trash_bags",
        "plastic_water_bottles", "disposable_plastic_cutlery",
    },
    "METAL": {"aerosol_cans", "aluminum_food_cans", "aluminum_soda_cans", "steel_food_cans"},
    "GLASS": {"glass_beverage_bottles", "glass_cosmetic_containers", "glass_food_jars"},
    "PAPER": {"magazines", "newspaper", "office_paper", "paper_cups"},
    "CARDBOARD": {"cardboard_boxes", "cardboard_packaging"},
    "ORGANIC": {"coffee_grounds", "eggshells", "food_waste", "tea_bags"},
}


@pytest.fixture(scope="module")
def master():
    return build_taxonomy(**TaxonomyConfig().model_dump())


def test_master_30_order_is_frozen(master):
    assert list(MASTER_30) == SPEC_MASTER_30
    assert list(master.classes) == SPEC_MASTER_30
    assert master.num_classes == 30
    assert master.index("aerosol_cans") == 0
    assert master.index("shoes") == 25
    assert master.index("tea_bags") == 29


def test_bins_match_the_spec_and_partition_the_classes(master):
    assert {name: set(members) for name, members in master.bins.items()} == SPEC_BINS
    members = [c for group in master.bins.values() for c in group]
    assert sorted(members) == sorted(SPEC_MASTER_30)  # every class in exactly one bin
    assert master.bin_of("plastic_straws") == "landfill"
    assert master.bin_of("aerosol_cans") == "special"
    assert master.bin_of("tea_bags") == "compost"


def test_sets_match_the_spec(master):
    assert {name: set(members) for name, members in master.sets.items()} == SPEC_SETS


def test_set_labels_resolve_to_class_indices(master):
    assert master.resolve("shoes") == (25,)
    assert master.resolve("GLASS") == (10, 11, 12)
    assert master.resolve(["METAL", "GLASS"]) == tuple(sorted(
        master.index(c) for c in SPEC_SETS["METAL"] | SPEC_SETS["GLASS"]))
    assert master.resolve(["plastic_straws", "PLASTIC"]) == master.resolve("PLASTIC")  # a union, no repeats


def test_label_name_round_trips(master):
    assert master.label_name(master.resolve("CARDBOARD")) == "CARDBOARD"
    assert master.label_name((25,)) == "shoes"
    assert master.label_name((0, 25)) == "aerosol_cans|shoes"  # no set matches: spelled out


def test_unknown_names_raise_and_are_named(master):
    with pytest.raises(KeyError, match="plastik"):
        master.resolve("plastik")
    with pytest.raises(KeyError, match="batteries"):
        master.resolve(["METAL", "batteries"])
    with pytest.raises(KeyError, match="batteries"):
        master.index("batteries")
    assert master.bin_of("batteries") is None


def test_to_dict_rebuilds_the_same_taxonomy(master):
    # A checkpoint stores to_dict(); inference rebuilds from it.
    assert build_taxonomy(**master.to_dict()) == master


def test_custom_class_list_bins_and_sets():
    t = build_taxonomy(classes=["cat", "dog", "bird"], bins={"pets": ["cat", "dog"], "wild": ["bird"]},
                       sets={"MAMMAL": ["cat", "dog"]})
    assert t.classes == ("cat", "dog", "bird")
    assert t.num_classes == 3
    assert t.bin_of("bird") == "wild"
    assert t.resolve("MAMMAL") == (0, 1)
    assert "PLASTIC" not in t.sets  # master_30 sets come only with master_30 classes
    assert build_taxonomy(**t.to_dict()) == t


def test_custom_classes_without_bins():
    t = build_taxonomy(classes=["a", "b"], bins=None)
    assert t.bins is None and t.bin_of("a") is None
    assert t.to_dict()["bins"] is None


def test_master_30_accepts_extra_sets():
    t = build_taxonomy(sets={"CANS": ["aluminum_soda_cans", "steel_food_cans"]})
    assert t.resolve("CANS") == (2, 26)
    assert "PLASTIC" in t.sets


def test_config_supplies_its_own_classes():
    section = TaxonomyConfig.model_validate({"classes": ["x", "y"], "bins": None, "sets": {"XY": ["x", "y"]}})
    t = build_taxonomy(**section.model_dump())
    assert t.classes == ("x", "y") and t.resolve("XY") == (0, 1)


@pytest.mark.parametrize(
    ("kwargs", "key", "named"),
    [
        ({"classes": ["a", "b"]}, "taxonomy.bins", "master_30"),  # default bins need master_30
        ({"classes": ["a", "b"], "bins": {"r": ["a", "z"]}}, "taxonomy.bins.r", "z"),
        ({"classes": ["a", "b"], "bins": None, "sets": {"S": ["q"]}}, "taxonomy.sets.S", "q"),
        ({"classes": ["a", "b"], "bins": None, "sets": {"a": ["b"]}}, "taxonomy.sets.a", "class's name"),
        ({"classes": ["a", "a"], "bins": None}, "taxonomy.classes", "'a'"),
        ({"classes": [], "bins": None}, "taxonomy.classes", "empty"),
        ({"classes": "master_31"}, "taxonomy.classes", "master_31"),
        ({"bins": "recycling"}, "taxonomy.bins", "recycling"),
    ],
    ids=["bins-need-master", "unknown-in-bin", "unknown-in-set", "set-named-like-class",
         "duplicate", "empty", "unknown-taxonomy", "unknown-bins"],
)
def test_bad_taxonomies_raise_config_errors_naming_key_and_value(kwargs, key, named):
    with pytest.raises(ConfigError) as info:
        build_taxonomy(**kwargs)
    assert info.value.key == key
    assert named in str(info.value)
    assert info.value.exit_code == 2

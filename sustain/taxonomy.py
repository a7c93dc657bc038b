"""The class taxonomy: class order, disposal bins and named class sets.

`master_30` is frozen: its index order is part of every checkpoint, so it
must never be reordered. A config may bring its own classes, bins and sets;
`build_taxonomy` turns the config section into one immutable `Taxonomy` that
training, evaluation and inference all share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

MASTER_30: tuple[str, ...] = (
    "aerosol_cans",
    "aluminum_food_cans",
    "aluminum_soda_cans",
    "cardboard_boxes",
    "cardboard_packaging",
    "clothing",
    "coffee_grounds",
    "disposable_plastic_cutlery",
    "eggshells",
    "food_waste",
    "glass_beverage_bottles",
    "glass_cosmetic_containers",
    "glass_food_jars",
    "magazines",
    "newspaper",
    "office_paper",
    "paper_cups",
    "plastic_cup_lids",
    "plastic_detergent_bottles",
    "plastic_food_containers",
    "plastic_shopping_bags",
    "plastic_soda_bottles",
    "plastic_straws",
    "plastic_trash_bags",
    "plastic_water_bottles",
    "shoes",
    "steel_food_cans",
    "styrofoam_cups",
    "styrofoam_food_containers",
    "tea_bags",
)

MASTER_30_BINS: dict[str, tuple[str, ...]] = {
    "recycle": (
        "aluminum_food_cans",
        "aluminum_soda_cans",
        "cardboard_boxes",
        "cardboard_packaging",
        "glass_beverage_bottles",
        "glass_cosmetic_containers",
        "glass_food_jars",
        "magazines",
        "newspaper",
        "office_paper",
        "plastic_cup_lids",
        "plastic_detergent_bottles",
        "plastic_food_containers",
        "plastic_soda_bottles",
        "plastic_water_bottles",
        "steel_food_cans",
    ),
    "compost": ("coffee_grounds", "eggshells", "food_waste", "tea_bags"),
    "landfill": (
        "disposable_plastic_cutlery",
        "paper_cups",
        "plastic_straws",
        "plastic_trash_bags",
        "styrofoam_cups",
        "styrofoam_food_containers",
    ),
    "special": ("aerosol_cans", "plastic_shopping_bags"),
    "donate": ("clothing", "shoes"),
}

# Coarse labels of the public datasets, as sets of fine classes (SPEC §4).
MASTER_30_SETS: dict[str, tuple[str, ...]] = {
    "PLASTIC": tuple(c for c in MASTER_30 if c.startswith("plastic_"))
    + ("disposable_plastic_cutlery",),
    "METAL": ("aerosol_cans", "aluminum_food_cans", "aluminum_soda_cans", "steel_food_cans"),
    "GLASS": tuple(c for c in MASTER_30 if c.startswith("glass_")),
    "PAPER": ("magazines", "newspaper", "office_paper", "paper_cups"),
    "CARDBOARD": ("cardboard_boxes", "cardboard_packaging"),
    "ORGANIC": ("coffee_grounds", "eggshells", "food_waste", "tea_bags"),
}


@dataclass(frozen=True)
class Taxonomy:
    """Classes in index order, optional disposal bins, and named sets."""

    classes: tuple[str, ...]
    bins: Mapping[str, tuple[str, ...]] | None = None
    sets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for name in self.classes:
            if name in seen:
                raise ConfigError("taxonomy.classes", f"class {name!r} is listed twice")
            seen.add(name)
        if not self.classes:
            raise ConfigError("taxonomy.classes", "the class list is empty")
        for bin_name, members in (self.bins or {}).items():
            self._check_known(f"taxonomy.bins.{bin_name}", members)
        for set_name, members in self.sets.items():
            self._check_known(f"taxonomy.sets.{set_name}", members)
            if set_name in seen:
                raise ConfigError(f"taxonomy.sets.{set_name}", "a set may not share a class's name")

    def _check_known(self, key: str, members: Iterable[str]) -> None:
        unknown = [m for m in members if m not in self.classes]
        if unknown:
            raise ConfigError(key, f"names classes that are not in the taxonomy: {unknown}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index(self, name: str) -> int:
        try:
            return self.classes.index(name)
        except ValueError:
            raise KeyError(f"{name!r} is not a class of this taxonomy") from None

    def bin_of(self, name: str) -> str | None:
        """The disposal bin of a class, or None when the taxonomy has no bins for it."""
        for bin_name, members in (self.bins or {}).items():
            if name in members:
                return bin_name
        return None

    def resolve(self, label: str | Iterable[str]) -> tuple[int, ...]:
        """Class indices for a label: a class name, a set name, or a list of either.

        Raises KeyError naming the first unknown name.
        """
        names = [label] if isinstance(label, str) else list(label)
        indices: set[int] = set()
        for name in names:
            if name in self.sets:
                indices.update(self.index(c) for c in self.sets[name])
            else:
                indices.add(self.index(name))
        return tuple(sorted(indices))

    def label_name(self, indices: Iterable[int]) -> str:
        """Readable name of a target: the class, the set's name if one matches, or 'a|b|c'."""
        idx = tuple(sorted(indices))
        if len(idx) == 1:
            return self.classes[idx[0]]
        for set_name, members in self.sets.items():
            if tuple(sorted(self.index(c) for c in members)) == idx:
                return set_name
        return "|".join(self.classes[i] for i in idx)

    def to_dict(self) -> dict:
        return {
            "classes": list(self.classes),
            "bins": {k: list(v) for k, v in self.bins.items()} if self.bins is not None else None,
            "sets": {k: list(v) for k, v in self.sets.items()},
        }


def taxonomy_from_meta(meta: Mapping[str, Any]) -> Taxonomy:
    """The taxonomy a checkpoint's metadata (best_model.json, the ONNX metadata) records."""
    bins = meta.get("bins")
    return Taxonomy(
        classes=tuple(meta["classes"]),
        bins={k: tuple(v) for k, v in bins.items()} if bins else None,
        sets={k: tuple(v) for k, v in (meta.get("sets") or {}).items()},
    )


def build_taxonomy(
    classes: str | list[str] = "master_30",
    bins: str | dict[str, list[str]] | None = "master_30",
    sets: dict[str, list[str]] | None = None,
) -> Taxonomy:
    """Build the taxonomy a config asks for (see `TaxonomyConfig`).

    The master_30 sets (PLASTIC, METAL, ...) are available whenever the
    master_30 classes are; a config's own `sets` are added on top.
    """
    if classes == "master_30":
        class_tuple = MASTER_30
        named_sets: dict[str, tuple[str, ...]] = dict(MASTER_30_SETS)
    elif isinstance(classes, str):
        raise ConfigError("taxonomy.classes", f"unknown taxonomy {classes!r}; use 'master_30' or a list of class names")
    else:
        class_tuple = tuple(classes)
        named_sets = {}
    named_sets.update({k: tuple(v) for k, v in (sets or {}).items()})

    if bins == "master_30":
        if class_tuple != MASTER_30:
            raise ConfigError("taxonomy.bins", "'master_30' bins need the master_30 classes; give your own {bin: [classes]} or null")
        bin_map: dict[str, tuple[str, ...]] | None = dict(MASTER_30_BINS)
    elif bins is None:
        bin_map = None
    elif isinstance(bins, str):
        raise ConfigError("taxonomy.bins", f"unknown bins {bins!r}; use 'master_30', a mapping or null")
    else:
        bin_map = {k: tuple(v) for k, v in bins.items()}
    return Taxonomy(classes=class_tuple, bins=bin_map, sets=named_sets)

"""Ingestion end to end on lakes built here, with exact known counts (issue 3, "Done when")."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sustain.artifacts import DataSummary
from sustain.config import config_from_dict
from sustain.data.lake import ingest
from sustain.data.manifest import (
    MANIFEST_COLUMNS,
    ManifestRow,
    manifest_hash,
    manifest_text,
    read_manifest,
)
from sustain.errors import ConfigError, UsageError
from sustain.taxonomy import build_taxonomy

TAX = build_taxonomy()
SPLITS = ("train", "val", "test")


def picture(seed: int, size: int = 24) -> Image.Image:
    """A smooth random picture: distinct seeds give distinct pHashes and colours."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((size, size), Image.Resampling.BICUBIC)


def save(path: Path, image: Image.Image | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, bytes):
        path.write_bytes(image)
    else:
        image.save(path, quality=95)


def build_lake(root: Path, reverse: bool = False) -> None:
    """Two sources with every case of the issue. The expected counts are in the tests below.

    master (identity, master_30 layout): aerosol_cans 10, clothing 20, plastic_straws 11,
      shoes 10 + 4 corrupt files, mystery_thing 3 (unmapped), notes.txt (not an image).
    coarse (plastic/metal sets, trash null): plastic 10 + a byte copy of a clothing image
      (a conflict) + a JPEG copy of the 11th plastic_straws PNG (a near duplicate);
      metal 10 + a byte copy of an aerosol_cans image (consistent: METAL holds it);
      trash 4 (dropped), battery 2 (unmapped), DATASET/ a nested copy (excluded).
    """
    files: list[tuple[str, Image.Image | bytes]] = []
    seed = 0

    def add(rel: str, n: int, ext: str = "png") -> None:
        nonlocal seed
        for i in range(n):
            files.append((f"{rel}/img_{i:03d}.{ext}", picture(seed)))
            seed += 1

    m = "master/images/images"
    add(f"{m}/aerosol_cans/default", 5)
    add(f"{m}/aerosol_cans/real_world", 5, "jpg")
    add(f"{m}/clothing/default", 10)
    add(f"{m}/clothing/real_world", 10)
    add(f"{m}/plastic_straws/default", 10)
    add(f"{m}/shoes/default", 10)
    add(f"{m}/mystery_thing/default", 3)
    add("coarse/plastic", 10)
    add("coarse/metal", 10)
    add("coarse/trash", 4)
    add("coarse/battery", 2)
    blob = dict(files)
    files += [
        ("coarse/metal/copy_of_aerosol.png", blob[f"{m}/aerosol_cans/default/img_000.png"]),
        ("coarse/plastic/copy_of_clothing.png", blob[f"{m}/clothing/default/img_000.png"]),
        ("coarse/DATASET/plastic/nested.png", blob["coarse/plastic/img_000.png"]),
    ]
    buf = io.BytesIO()
    picture(9999, 64).save(buf, "PNG")
    files.append((f"{m}/plastic_straws/default/img_100.png", buf.getvalue()))
    jpeg = io.BytesIO()
    picture(9999, 64).save(jpeg, "JPEG", quality=92)
    files.append(("coarse/plastic/straw_again.jpg", jpeg.getvalue()))  # a near duplicate
    # corrupt files in a labelled folder: one of each kind
    good = io.BytesIO()
    picture(5000, 64).save(good, "JPEG", quality=90)
    files += [
        (f"{m}/shoes/default/zero.jpg", b""),
        (f"{m}/shoes/default/truncated.jpg", good.getvalue()[:400]),
        (f"{m}/shoes/default/page.png", b"<html>not found</html>"),
        (f"{m}/shoes/default/huge.png", Image.new("RGB", (200, 200), (1, 2, 3))),
        (f"{m}/notes.txt", b"readme"),
    ]
    for rel, image in (reversed(files) if reverse else files):
        save(root / rel, image)


def lake_config(root: Path, tmp: Path, **data) -> dict:
    return {
        "seed": 3,
        "output_dir": str(tmp / "out"),
        "data": {
            "root": str(root),
            "cache_dir": str(tmp / "cache"),
            "max_image_pixels": 10_000,  # the 200x200 file is over it, the 24x24 pictures are not
            "sources": [
                {"name": "master", "root": "master/images/images", "label_map": "identity"},
                {"name": "coarse", "root": "coarse", "exclude": ["DATASET/**"],
                 "label_map": {"plastic": "PLASTIC", "metal": "METAL", "trash": None}},
                {"name": "later", "root": "not/downloaded/yet", "label_map": "identity", "enabled": False},
            ],
            **data,
        },
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("lake")
    root = tmp / "data"
    build_lake(root)
    cfg = config_from_dict(lake_config(root, tmp))
    return root, tmp, cfg, ingest(cfg, TAX, out_dir=cfg.output_dir, log_summary=False)


def counts(rows, key) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(key(r), Counter())[r.split] += 1
    return {k: tuple(v[s] for s in SPLITS) for k, v in out.items()}


# --------------------------------------------------------------------------- the counts


def test_exact_counts_per_source_class_and_split(built) -> None:
    _, _, _, lake = built
    assert lake.sources == ["master", "coarse"]
    assert len(lake.rows) == 71
    # Largest-remainder targets per label, whole duplicate groups at a time (docs/data.md).
    # plastic_straws and PLASTIC share a near-duplicate group of 2, stratified under
    # 'PLASTIC' (tie: alphabetically first); as the largest group it goes to train first.
    assert counts(lake.rows, lambda r: r.label) == {
        "aerosol_cans": (8, 1, 1),
        "clothing": (15, 2, 2),  # 19: one copy was dropped for its label conflict
        "plastic_straws": (9, 1, 1),  # 10 singletons give 8/1/1, plus its near-duplicate in train
        "shoes": (8, 1, 1),  # the 4 corrupt files are not here
        "PLASTIC": (9, 1, 1),  # 10 + the near duplicate; the conflicting copy is gone
        # (PLASTIC stratum: 10 singletons + the group of 2 = 12 -> targets 10/1/1)
        "METAL": (8, 1, 1),  # the copy of an aerosol can is merged into the fine row
    }
    assert counts(lake.rows, lambda r: r.source) == {"master": (40, 5, 5), "coarse": (17, 2, 2)}

    s = lake.data_summary
    assert s.total_images == 71
    assert s.splits == {"train": 57, "val": 7, "test": 7}
    assert s.sources["master"] | {"root": None} == {
        "root": None, "images": 50, "labels": 4, "splits": {"train": 40, "val": 5, "test": 5}, "files_found": 58,
        "unmapped": 3, "dropped": 0, "corrupt": 4, "duplicates_merged": 0, "conflicts_dropped": 1,
        "excluded": 0, "other_files": 1, "unused_label_map_keys": [], "unreadable_folders": []}
    assert s.sources["coarse"] | {"root": None} == {
        "root": None, "images": 21, "labels": 2, "splits": {"train": 17, "val": 2, "test": 2}, "files_found": 29,
        "unmapped": 2, "dropped": 4, "corrupt": 0, "duplicates_merged": 1, "conflicts_dropped": 1,
        "excluded": 1, "other_files": 0, "unused_label_map_keys": [], "unreadable_folders": []}
    assert s.classes["clothing"] == {"train": 15, "val": 2, "test": 2, "total": 19}
    assert s.classes["tea_bags"]["total"] == 0 and "tea_bags" in s.empty_classes
    assert s.set_labels["PLASTIC"]["total"] == 11
    assert s.disabled_sources == ["later"]
    assert s.dropped == {"total": 4, "by_key": {"coarse: trash": 4}}
    assert s.corrupt == {"total": 4, "by_kind": {"not an image": 1, "over the pixel limit": 1,
                                                     "truncated": 1, "zero bytes": 1}}
    assert s.duplicates["exact_merged"] == 1
    assert s.duplicates["conflicting_dropped"] == 2
    assert s.duplicates["near_duplicate_groups"] == 1 and s.duplicates["near_duplicate_images"] == 2
    assert s.imbalance_ratio == 1.9  # fine classes only: clothing 19 / shoes 10
    assert s.manifest_hash == lake.manifest_hash


def test_no_exact_or_near_duplicate_crosses_splits(built) -> None:
    _, _, _, lake = built
    for key in ("content_hash", "group"):
        split_of: dict = {}
        for r in lake.rows:
            split_of.setdefault(getattr(r, key), set()).add(r.split)
        assert all(len(s) == 1 for s in split_of.values()), key
    near = [r for r in lake.rows if r.relpath in ("plastic_straws/default/img_100.png", "plastic/straw_again.jpg")]
    assert len(near) == 2 and near[0].group == near[1].group and near[0].split == near[1].split
    assert len({r.content_hash for r in lake.rows}) == len(lake.rows)


def test_set_labels_and_duplicate_resolution(built) -> None:
    _, _, _, lake = built
    by_rel = {(r.source, r.relpath): r for r in lake.rows}
    plastic = by_rel["coarse", "plastic/img_000.png"]
    assert plastic.label == "PLASTIC" and plastic.targets == TAX.resolve("PLASTIC")
    assert len(plastic.targets) == 9 and TAX.index("disposable_plastic_cutlery") in plastic.targets
    assert by_rel["coarse", "metal/img_000.png"].targets == TAX.resolve("METAL")
    # the byte copy in metal/ was merged into the fine-labelled row
    aerosol = by_rel["master", "aerosol_cans/default/img_000.png"]
    assert aerosol.targets == (TAX.index("aerosol_cans"),) and aerosol.duplicates == 1
    assert ("coarse", "metal/copy_of_aerosol.png") not in by_rel
    # clothing vs PLASTIC: both copies are gone and reported
    assert ("master", "clothing/default/img_000.png") not in by_rel
    [conflict] = lake.data_summary.duplicates["conflicts"]
    assert sorted(c["label"] for c in conflict["copies"]) == ["PLASTIC", "clothing"]
    assert any(c["path"].endswith("copy_of_clothing.png") for c in conflict["copies"])


def test_files_written_and_manifest_round_trip(built) -> None:
    _, tmp, _, lake = built
    out = tmp / "out"
    lines = (out / "corrupt_files.txt").read_text().splitlines()
    assert lines[0].startswith("# 4 files")
    reasons = {Path(line.split("\t")[0]).name: line.split("\t")[1] for line in lines[1:]}
    assert reasons["zero.jpg"] == "zero bytes"
    assert reasons["truncated.jpg"].startswith("truncated")
    assert reasons["page.png"].startswith("not an image")
    assert reasons["huge.png"].startswith("over the pixel limit: 200x200 = 40,000 pixels > 10,000")

    with (out / "manifest.csv").open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["path", "relpath", "source", "label", "split", "content_hash", "group", "duplicates"]
    assert [t["path"] for t in table] == [r.path for r in lake.rows]
    assert all(Path(t["path"]).is_absolute() and Path(t["path"]).is_file() for t in table)
    assert read_manifest(out / "manifest.csv", TAX) == lake.rows
    assert manifest_hash(read_manifest(out / "manifest.csv", TAX)) == lake.manifest_hash

    import json
    written = json.loads((out / "data_summary.json").read_text())
    assert written["total_images"] == 71
    assert written == lake.summary and "image_cache" not in written  # only a training run records it
    assert list(written)[5:8] == ["sources", "disabled_sources", "classes"]  # the order ingest always wrote
    assert DataSummary.read(out) == lake.data_summary  # written and read by the same record


def test_manifest_text_is_what_csv_writes() -> None:
    def row(path: str, label: str = "glass") -> ManifestRow:
        return ManifestRow(path=path, source="s", label=label, targets=(0,), split="train", content_hash="ab",
                           group=3, relpath=path.rsplit("/", 1)[-1], duplicates=1)

    plain = [row("/lake/a b/ü.jpg"), row("/lake/x.jpg", "a|b")]
    for odd in ([], [row("/lake/a,b.jpg")], [row('/lake/say "hi".jpg')], [row("/lake/two\nlines.jpg")],
                [row("/lake/cr\r.jpg")]):
        rows = [*plain, *odd]
        expected = io.StringIO()  # csv.writer, as manifest.csv was always written
        csv.writer(expected, lineterminator="\n").writerows(
            [MANIFEST_COLUMNS, *([getattr(r, c) for c in MANIFEST_COLUMNS] for r in rows)])
        assert manifest_text(rows) == expected.getvalue()


def test_unmapped_folders_are_reported_with_count_and_example(built) -> None:
    _, root, _, lake = built
    folders = {(u["source"], u["folder"]): u for u in lake.data_summary.unmapped["folders"]}
    assert set(folders) == {("master", "mystery_thing"), ("coarse", "battery")}
    assert folders["master", "mystery_thing"]["count"] == 3
    assert folders["master", "mystery_thing"]["example"].endswith("mystery_thing/default/img_000.png")
    assert folders["coarse", "battery"]["count"] == 2
    assert lake.data_summary.unmapped["total"] == 5


# --------------------------------------------------------------------------- determinism


def test_same_split_under_shuffled_listing_other_creation_order_and_location(built, tmp_path, shuffled_scandir) -> None:
    _, _, _, lake = built
    root = tmp_path / "elsewhere" / "lake"
    build_lake(root, reverse=True)
    cfg = config_from_dict(lake_config(root, tmp_path))
    again = ingest(cfg, TAX, log_summary=False)
    assert again.manifest_hash == lake.manifest_hash
    key = lambda r: (r.source, r.relpath, r.label, r.split, r.content_hash, r.group, r.duplicates)  # noqa: E731
    assert [key(r) for r in again.rows] == [key(r) for r in lake.rows]
    assert again.rows[0].path.startswith(str(root))


def test_seed_changes_the_split_and_the_hash(built, tmp_path) -> None:
    root, tmp, _, lake = built
    raw = lake_config(root, tmp)
    raw["seed"] = 4
    other = ingest(config_from_dict(raw), TAX, log_summary=False)
    assert other.manifest_hash != lake.manifest_hash
    assert [r.split for r in other.rows] != [r.split for r in lake.rows]
    assert Counter(r.label for r in other.rows) == Counter(r.label for r in lake.rows)


def test_second_ingest_reads_the_cache_and_redecodes_only_changed_files(built) -> None:
    root, tmp, cfg, lake = built
    again = ingest(cfg, TAX, log_summary=False)
    assert again.data_summary.decode["decoded"] == 0
    assert again.data_summary.decode["cached"] == 71 + 4 + 3  # kept + corrupt + merged/conflicting copies
    assert again.manifest_hash == lake.manifest_hash
    # a file rewritten in place is decoded again, and the others are not
    target = root / "master/images/images/shoes/default/img_000.png"
    before = target.stat()
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    third = ingest(cfg, TAX, log_summary=False)
    assert third.data_summary.decode["decoded"] == 1
    assert third.manifest_hash == lake.manifest_hash


# --------------------------------------------------------------------------- messages


def test_printed_summary(built, sustain_log) -> None:
    _, _, cfg, _ = built
    ingest(cfg, TAX)
    text = sustain_log.text
    lines = [r.getMessage() for r in sustain_log.records]
    assert f"📂 Ingesting master from {Path(cfg.data.root) / 'master/images/images'}..." in lines
    assert "📂 Ingesting coarse from " + str(Path(cfg.data.root) / "coarse") + "..." in lines
    assert "⏭️  Skipping later (enabled: false)" in lines
    summary_at = lines.index("📊 Dataset Summary:")
    assert lines[summary_at + 1] == "  ✓ Total images loaded: 71"
    assert "    master: 50 images (train 40, val 5, test 5)" in text
    assert "clothing" in text and "(train 15, val 2, test 2)" in text
    assert "Unmapped: 5 files in 2 folders" in text and "master: mystery_thing/ (3 files, e.g. " in text
    assert "Dropped (label null): 4 (coarse: trash 4)" in text
    assert "Corrupt: 4 (not an image 1, over the pixel limit 1, truncated 1, zero bytes 1" in text
    assert "1 exact copies merged, 2 files dropped for conflicting labels, 1 near-duplicate groups" in text
    assert "Imbalance ratio: 1.90" in text
    assert "Classes with no single-label images" in text  # a warning, not an error without strict


# --------------------------------------------------------------------------- errors


def tiny_lake(root: Path, folders: dict[str, int]) -> None:
    seed = 100
    for folder, n in folders.items():
        for i in range(n):
            save(root / folder / f"{i}.png", picture(seed))
            seed += 1


def tiny_config(root: Path, tmp: Path, label_map, classes=None, **data) -> dict:
    raw = {"output_dir": str(tmp / "out"),
           "data": {"root": str(root), "cache_dir": str(tmp / "cache"),
                    "sources": [{"name": "only", "root": ".", "label_map": label_map}], **data}}
    if classes:
        raw["taxonomy"] = {"classes": classes, "bins": None}
    return raw


def test_missing_root_names_source_and_path(tmp_path) -> None:
    raw = tiny_config(tmp_path / "nowhere", tmp_path, "identity")
    with pytest.raises(UsageError) as info:
        ingest(config_from_dict(raw), TAX, log_summary=False)
    message = str(info.value)
    assert "source 'only'" in message and str(tmp_path / "nowhere") in message
    assert "sustain data download" in message and "enabled: false" in message


def test_missing_roots_hint_names_every_missing_source(tmp_path) -> None:
    raw = tiny_config(tmp_path / "nowhere", tmp_path, "identity")
    raw["data"]["sources"] = [{"name": f"src{i}", "root": f"s{i}", "label_map": "identity"} for i in range(8)]
    with pytest.raises(UsageError) as info:
        ingest(config_from_dict(raw), TAX, log_summary=False)
    assert "(src0, src1, src2, src3, src4, src5, src6, src7)" in info.value.hint


def test_label_map_naming_an_unknown_class_is_a_config_error(tmp_path) -> None:
    tiny_lake(tmp_path / "d", {"cat": 2})
    raw = tiny_config(tmp_path / "d", tmp_path, {"cat": "kitten"})
    with pytest.raises(ConfigError) as info:
        ingest(config_from_dict(raw), TAX, log_summary=False)
    assert info.value.key == "data.sources[only].label_map.cat" and "'kitten'" in str(info.value)


def test_empty_lake_is_an_error(tmp_path) -> None:
    tiny_lake(tmp_path / "d", {"cat": 2, "dog": 1})
    raw = tiny_config(tmp_path / "d", tmp_path, {"cat": None})
    with pytest.raises(UsageError, match="The data lake is empty.*only: 3 image files, 1 unmapped, 2 dropped"):
        ingest(config_from_dict(raw), TAX, log_summary=False)


def test_strict_rejects_unmapped_files(tmp_path) -> None:
    tiny_lake(tmp_path / "d", {"cat": 2, "dog": 1})
    raw = tiny_config(tmp_path / "d", tmp_path, {"cat": "cat"}, classes=["cat"], strict=True)
    with pytest.raises(UsageError, match=r"data\.strict: 1 files .* folder 'dog'") as info:
        ingest(config_from_dict(raw), build_taxonomy(classes=["cat"], bins=None), log_summary=False)
    assert "data.sources[only].label_map" in str(info.value)
    raw["data"]["strict"] = False
    lake = ingest(config_from_dict(raw), build_taxonomy(classes=["cat"], bins=None), log_summary=False)
    assert len(lake.rows) == 2


def test_strict_rejects_a_class_without_images(tmp_path) -> None:
    tiny_lake(tmp_path / "d", {"cat": 3})
    tax = build_taxonomy(classes=["cat", "dog"], bins=None)
    raw = tiny_config(tmp_path / "d", tmp_path, "identity", classes=["cat", "dog"], strict=True)
    with pytest.raises(UsageError, match=r"classes with no single-label images: \['dog'\]"):
        ingest(config_from_dict(raw), tax, log_summary=False)


def test_every_source_disabled_is_an_error(tmp_path) -> None:
    raw = tiny_config(tmp_path, tmp_path, "identity")
    raw["data"]["sources"][0]["enabled"] = False
    with pytest.raises(UsageError, match="enabled: false"):
        ingest(config_from_dict(raw), TAX, log_summary=False)


def test_small_class_is_warned_about(tmp_path, sustain_log) -> None:
    tiny_lake(tmp_path / "d", {"cat": 12, "dog": 2})
    tax = build_taxonomy(classes=["cat", "dog"], bins=None)
    raw = tiny_config(tmp_path / "d", tmp_path, "identity", classes=["cat", "dog"])
    lake = ingest(config_from_dict(raw), tax)
    assert [r.split for r in lake.rows if r.label == "dog"] == ["train", "train"]
    warnings = [r.getMessage() for r in sustain_log.records if r.levelno == logging.WARNING]
    assert any("'dog' is too small to split: 2 images in 2 duplicate groups give train 2, val 0, test 0" in w
               for w in warnings)


def test_cache_folder_inside_a_source_root_is_not_scanned(tmp_path) -> None:
    tiny_lake(tmp_path / "d", {"cat": 3})
    raw = tiny_config(tmp_path / "d", tmp_path, "identity", classes=["cat"])
    del raw["data"]["cache_dir"]  # default: <data.root>/.sustain_cache, inside this source's root
    tax = build_taxonomy(classes=["cat"], bins=None)
    first = ingest(config_from_dict(raw), tax, log_summary=False)
    assert (tmp_path / "d" / ".sustain_cache").is_dir()
    second = ingest(config_from_dict(raw), tax, log_summary=False)
    assert len(second.rows) == 3 and second.data_summary.other_files == 0
    assert second.data_summary.decode["decoded"] == 0 and second.manifest_hash == first.manifest_hash


# --------------------------------------------------------------------------- CLI and demo lake


def test_cli_ingest_writes_the_manifest_and_exits_2_on_a_missing_root(built, tmp_path, write_config, run_cli) -> None:
    root, _, _, _ = built
    raw = lake_config(root, tmp_path)
    result = run_cli("data", "ingest", "--config", write_config(raw))
    assert result.code == 0, result.output
    assert "  ✓ Total images loaded: 71" in result.out
    assert (tmp_path / "out" / "manifest.csv").is_file()

    raw["data"]["sources"][1]["root"] = "renamed"
    result = run_cli("data", "ingest", "--config", write_config(raw))
    assert result.code == 2
    assert "source 'coarse': root not found" in result.output and "Traceback" not in result.output


def test_demo_lake_duplicates_and_corrupt_files_are_found(demo_lake, tmp_path) -> None:
    lake = ingest(config_from_dict(demo_config_raw(demo_lake.root, tmp_path)), TAX, out_dir=tmp_path / "out",
                  log_summary=False)
    stats = demo_lake.stats
    roots = {"demo_master": "master/images/images/", "demo_coarse": "coarse/"}
    by_rel = {roots[r.source] + r.relpath: r for r in lake.rows}
    listed = {Path(line.split("\t")[0]).relative_to(demo_lake.root).as_posix()
              for line in (tmp_path / "out" / "corrupt_files.txt").read_text().splitlines()[1:]}
    assert listed == set(stats["corrupt"])
    for pair in stats["duplicates"]:  # byte copies: one row survives
        assert sum(p in by_rel for p in pair) == 1, pair
    for pair in stats["near_duplicates"]:  # re-encoded copies: one group, one split
        a, b = (by_rel[p] for p in pair)
        assert a.group == b.group and a.split == b.split


def demo_config_raw(root: Path, tmp: Path) -> dict:
    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "demo.yaml").read_text())
    raw["data"]["root"] = str(root)
    raw["data"]["cache_dir"] = str(tmp / "cache")  # keep the shared demo lake untouched
    return {"taxonomy": raw["taxonomy"], "seed": raw["seed"], "data": raw["data"]}

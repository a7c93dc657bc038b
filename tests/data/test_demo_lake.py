"""The procedural demo lake: determinism, layout, class signal, corrupt files, duplicates, format mix."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from sustain.config import config_from_dict
from sustain.data.demo import MARKER, PLANTED_CSV, PLANTED_FRACTION, make_demo_lake
from sustain.data.demo_images import BACKGROUNDS, FOREGROUNDS
from sustain.errors import UsageError
from sustain.taxonomy import MASTER_30, MASTER_30_SETS

REPO_ROOT = Path(__file__).resolve().parents[2]
MASTER = "master/images/images"
SOURCE_DIRS = ("master", "coarse")
COARSE_SETS = {"plastic": "PLASTIC", "metal": "METAL", "glass": "GLASS", "paper": "PAPER",
               "cardboard": "CARDBOARD", "organic": "ORGANIC"}


def lake_files(root: Path) -> dict[str, bytes]:
    """The lake's files (both sources and the marker), by posix path relative to the lake.

    Only these: other tests may leave a cache beside the sources of the shared lake."""
    paths = [p for top in SOURCE_DIRS for p in (root / top).rglob("*") if p.is_file()]
    if (root / MARKER).is_file():
        paths.append(root / MARKER)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(paths)}


def decode(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()  # a full decode: open() alone reads only the header
        return image


def class_of(image: Image.Image) -> int:
    """Which master_30 class an image shows, read from its pixels: background from the
    border, foreground from the pixels that sit nearer a foreground colour than the background."""
    px = np.asarray(image.convert("RGB"), dtype=np.float64)
    border = np.concatenate([px[:3].reshape(-1, 3), px[-3:].reshape(-1, 3),
                             px[:, :3].reshape(-1, 3), px[:, -3:].reshape(-1, 3)])
    backgrounds, foregrounds = np.array(BACKGROUNDS, float), np.array(FOREGROUNDS, float)
    bg = int(np.argmin(((backgrounds - np.median(border, axis=0)) ** 2).sum(1)))
    flat = px.reshape(-1, 3)
    to_fg = ((flat[:, None] - foregrounds[None]) ** 2).sum(-1)
    near_fg = to_fg.min(1) < ((flat - backgrounds[bg]) ** 2).sum(-1)
    fg = int(np.bincount(to_fg[near_fg].argmin(1), minlength=len(foregrounds)).argmax())
    return fg * len(BACKGROUNDS) + bg


@pytest.fixture(scope="module")
def decoded(demo_lake):
    """Every file of the session lake: relpath -> decoded image, or the decode error."""
    out: dict[str, Image.Image | Exception] = {}
    for rel in lake_files(demo_lake.root):
        if rel not in (MARKER, PLANTED_CSV):
            try:
                out[rel] = decode(demo_lake.root / rel)
            except Exception as exc:  # noqa: BLE001 - recording which files fail is the point
                out[rel] = exc
    return out


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = make_demo_lake(tmp_path / "a", seed=3, per_class=4)
    b = make_demo_lake(tmp_path / "b", seed=3, per_class=4)
    files_a, files_b = lake_files(tmp_path / "a"), lake_files(tmp_path / "b")
    assert a == b
    assert sorted(files_a) == sorted(files_b)
    assert [p for p in files_a if files_a[p] != files_b[p]] == []
    assert len(files_a) == a["files"] + 1  # + demo_lake.json


def test_different_seed_gives_different_images(tmp_path):
    make_demo_lake(tmp_path / "a", seed=3, per_class=4)
    make_demo_lake(tmp_path / "b", seed=4, per_class=4)
    hashes = [{hashlib.sha256(b).hexdigest() for b in lake_files(tmp_path / d).values() if len(b) > 1000}
              for d in ("a", "b")]
    assert hashes[0] and not hashes[0] & hashes[1]


def test_regenerating_replaces_the_old_lake(tmp_path):
    make_demo_lake(tmp_path / "lake", seed=0, per_class=6)
    make_demo_lake(tmp_path / "lake", seed=1, per_class=4)
    make_demo_lake(tmp_path / "fresh", seed=1, per_class=4)
    assert lake_files(tmp_path / "lake") == lake_files(tmp_path / "fresh")  # no stale files left
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]  # staging folder cleaned up


def test_refuses_a_folder_that_holds_something_else(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(UsageError, match="photos"):
        make_demo_lake(tmp_path / "photos", per_class=4)
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"precious"
    with pytest.raises(UsageError, match="per-class"):
        make_demo_lake(tmp_path / "tiny", per_class=1)


# --------------------------------------------------------------------------- layout and labels


def test_master_layout_holds_all_30_classes(demo_lake, decoded):
    root = demo_lake.root / MASTER
    assert sorted(p.name for p in root.iterdir()) == sorted(MASTER_30)
    counts = Counter(rel.split("/")[3] for rel, img in decoded.items()
                     if rel.startswith(MASTER) and isinstance(img, Image.Image))
    for name in MASTER_30:
        for sub in ("default", "real_world"):
            assert len(list((root / name / sub).iterdir())) >= 15, f"{name}/{sub}"
        assert counts[name] == demo_lake.stats["per_class"][name] >= 40


def test_coarse_folders_match_demo_config(demo_lake):
    raw = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    raw["data"]["root"] = str(demo_lake.root)
    cfg = config_from_dict(raw)
    master, coarse = cfg.data.sources
    assert cfg.source_root(master) == demo_lake.root / MASTER
    folders = {p.name for p in cfg.source_root(coarse).iterdir()}
    mapped = set(coarse.label_map)
    assert mapped <= folders
    assert {f for f in mapped if coarse.label_map[f] is None} == {"trash"}
    assert folders - mapped == set(demo_lake.stats["unmapped_folders"]) == {"misc_unsorted"}
    assert all(coarse.label_map[f] == s for f, s in COARSE_SETS.items())
    for folder in folders:
        assert demo_lake.stats["per_folder"][folder] >= 5


def planted(root: Path) -> list[list[str]]:
    """The rows of planted_label_noise.csv: [path, given_label, true_label]."""
    return [line.split(",") for line in (root / PLANTED_CSV).read_text(encoding="utf-8").splitlines()[1:]]


def test_each_image_shows_its_class(demo_lake, decoded):
    # The pixels carry the label: colour pair -> class, for every non-greyscale master image but the planted.
    checked = wrong = 0
    wrong_on_purpose = {row[0] for row in planted(demo_lake.root)}
    for rel, img in decoded.items():
        if rel.startswith(MASTER) and isinstance(img, Image.Image) and img.mode != "L" and rel not in wrong_on_purpose:
            checked += 1
            wrong += class_of(img) != MASTER_30.index(rel.split("/")[3])
    assert checked > 1000 and wrong / checked < 0.02


def test_coarse_images_are_true_to_their_set(decoded):
    for folder, set_name in COARSE_SETS.items():
        shown = [MASTER_30[class_of(img)] for rel, img in decoded.items()
                 if rel.startswith(f"coarse/{folder}/") and isinstance(img, Image.Image) and img.mode != "L"]
        outside = [c for c in shown if c not in MASTER_30_SETS[set_name]]
        assert len(shown) >= 8 and len(outside) <= 1, (folder, outside)


def test_classes_look_different(decoded):
    # Nearest-mean on 8x8 thumbnails separates the classes: a tiny model has a signal to learn.
    thumbs: dict[int, list[np.ndarray]] = {}
    for rel, img in decoded.items():
        if rel.startswith(MASTER) and isinstance(img, Image.Image):
            small = np.asarray(img.convert("RGB").resize((8, 8), Image.Resampling.BOX), float).ravel()
            thumbs.setdefault(MASTER_30.index(rel.split("/")[3]), []).append(small)
    means = np.stack([np.mean(thumbs[c][::2], axis=0) for c in range(30)])  # even images fit
    held_out = [(c, x) for c in range(30) for x in thumbs[c][1::2]]  # odd images score
    hits = sum(int(np.argmin(((means - x) ** 2).sum(1)) == c) for c, x in held_out)
    assert hits / len(held_out) > 0.8


# --------------------------------------------------------------------------- corrupt files


def test_corrupt_files_fail_to_decode_and_sit_in_labelled_folders(demo_lake, decoded):
    corrupt = demo_lake.stats["corrupt"]
    assert 3 <= len(corrupt) <= 10
    failing = sorted(rel for rel, img in decoded.items() if isinstance(img, Exception))
    assert failing == sorted(corrupt)  # they fail, and nothing else does
    for rel in corrupt:
        folder = rel.split("/")
        assert folder[-2] in ("default", "real_world") and folder[-3] in MASTER_30 or \
            folder[0] == "coarse" and folder[1] in COARSE_SETS, rel


def test_corrupt_files_cover_the_spec_kinds(demo_lake):
    blobs = {rel: (demo_lake.root / rel).read_bytes() for rel in demo_lake.stats["corrupt"]}
    zero = [r for r, b in blobs.items() if not b]
    truncated_jpeg = [r for r, b in blobs.items() if b.startswith(b"\xff\xd8") and not b.endswith(b"\xff\xd9")]
    fake_png = [r for r, b in blobs.items()
                if r.endswith(".png") and b and not b.startswith(b"\x89PNG") and b.isascii()]
    assert zero and truncated_jpeg and fake_png


# --------------------------------------------------------------------------- duplicates


def test_listed_duplicates_are_byte_identical_and_agree_on_label(demo_lake):
    pairs = demo_lake.stats["duplicates"]
    cross = [(a, b) for a, b in pairs if a.split("/")[0] != b.split("/")[0]]
    within = [(a, b) for a, b in pairs if a.split("/")[0] == b.split("/")[0]]
    assert len(cross) >= 3 and len(within) >= 1
    for a, b in pairs:
        assert (demo_lake.root / a).read_bytes() == (demo_lake.root / b).read_bytes(), (a, b)
    for master, coarse in cross:
        master, coarse = sorted((master, coarse), key=lambda p: not p.startswith(MASTER))
        assert master.split("/")[3] in MASTER_30_SETS[COARSE_SETS[coarse.split("/")[1]]]
    for a, b in within:
        assert a.split("/")[3] == b.split("/")[3]  # same class folder


def test_no_exact_duplicates_besides_the_listed_ones(demo_lake):
    by_hash: dict[str, list[str]] = {}
    for rel, blob in lake_files(demo_lake.root).items():
        if blob and rel != MARKER:
            by_hash.setdefault(hashlib.sha256(blob).hexdigest(), []).append(rel)
    groups = sorted(sorted(g) for g in by_hash.values() if len(g) > 1)
    assert groups == sorted(sorted(p) for p in demo_lake.stats["duplicates"])


def test_near_duplicates_differ_in_bytes_not_in_pixels(demo_lake):
    assert demo_lake.stats["near_duplicates"]
    for a, b in demo_lake.stats["near_duplicates"]:
        assert (demo_lake.root / a).read_bytes() != (demo_lake.root / b).read_bytes()
        pa, pb = (np.asarray(decode(demo_lake.root / p).convert("RGB"), float) for p in (a, b))
        assert np.abs(pa - pb).mean() < 4


# --------------------------------------------------------------------------- formats


def test_format_and_mode_mix(demo_lake, decoded):
    images = [img for img in decoded.values() if isinstance(img, Image.Image)]
    kinds = Counter((img.format, img.mode) for img in images)
    assert {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L"), ("PNG", "RGBA"), ("PNG", "P")} <= set(kinds)
    grey = kinds[("JPEG", "L")] + kinds[("PNG", "L")]
    assert grey / len(images) < 0.15  # colour carries most of the class
    assert {img.size for img in images} == {(64, 64)}
    suffixes = {Path(rel).suffix for rel in decoded}
    assert {".jpg", ".png"} <= suffixes and suffixes <= {".jpg", ".jpeg", ".JPG", ".png"}
    assert sum(len(b) for b in lake_files(demo_lake.root).values()) < 10_000_000


def test_stats_match_the_files(demo_lake):
    stats = demo_lake.stats
    assert json.loads((demo_lake.root / MARKER).read_text()) == stats
    files = [rel for rel in lake_files(demo_lake.root) if rel not in (MARKER, PLANTED_CSV)]
    assert stats["files"] == len(files)
    assert stats["images"] == len(files) - len(stats["corrupt"])
    assert sum(stats["formats"].values()) + len(stats["near_duplicates"]) + len(stats["duplicates"]) \
        == stats["images"]


def test_planted_wrong_labels_are_listed_at_the_root_and_never_ingested(demo_lake, decoded):
    """2% of the master images sit in another class's folder; the CSV says which; no source reads it."""
    from sustain.data.walk import walk_source

    assert (demo_lake.root / PLANTED_CSV).read_text(encoding="utf-8").startswith("path,given_label,true_label\n")
    rows = planted(demo_lake.root)
    master = sum(demo_lake.stats["per_class"].values())
    assert len(rows) == demo_lake.stats["planted_label_noise"] == round(PLANTED_FRACTION * master) > 0
    shown = []
    for path, given, true in rows:
        assert path.startswith(f"{MASTER}/{given}/") and given != true and true in MASTER_30
        if decoded[path].mode != "L":
            shown.append(MASTER_30[class_of(decoded[path])] == true)  # the picture shows the true class
    assert len(shown) >= len(rows) // 2 and sum(shown) >= len(shown) - 1
    # Outside every source of configs/demo.yaml; and even a source at the lake's root passes it over.
    walked = walk_source(demo_lake.root)
    assert PLANTED_CSV not in {f.rel for f in walked.files} and PLANTED_CSV in walked.ignored


# --------------------------------------------------------------------------- CLI


def test_cli_generates_and_if_missing_keeps_it(run_cli, tmp_path):
    out = tmp_path / "demo"
    first = run_cli("data", "demo", "--out", out, "--per-class", "4", "--seed", "5")
    assert first.code == 0, first.output
    assert str(out) in first.out
    before = lake_files(out)
    assert json.loads(before[MARKER])["seed"] == 5
    again = run_cli("data", "demo", "--out", out, "--if-missing", "--seed", "6")
    assert again.code == 0 and "already present" in again.out
    assert lake_files(out) == before


def test_cli_refuses_a_foreign_folder(run_cli, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me", encoding="utf-8")
    result = run_cli("data", "demo", "--out", tmp_path, "--per-class", "4")
    assert result.code == 2 and str(tmp_path) in result.out
    assert (tmp_path / "mine.txt").read_text(encoding="utf-8") == "keep me"

"""The procedural demo data lake: `sustain data demo --out DIR` (SPEC §8).

It mimics the real lake of SPEC §4 at toy scale, so that `make train` and the
tests exercise every ingestion path without downloading anything:

- `master/images/images/<class>/{default,real_world}/`: the master_30 layout,
  all 30 classes (configs/demo.yaml maps it with `label_map: identity`);
- `coarse/<folder>/`: a coarse source whose folders map to the set labels
  PLASTIC, METAL, ... Each coarse image is drawn from a fine class of that set,
  so the set label is true. `trash` maps to null (dropped) and `misc_unsorted`
  maps to nothing (it shows up in the unmapped report);
- a small, known set of wrong labels: `PLANTED_FRACTION` of the master images
  show another class than their folder names (listed with both labels in
  `planted_label_noise.csv` at the lake's root, outside every source, so
  ingestion never reads it), so the report's suspect-labels section has
  something real to find;
- a few corrupt files inside class folders (zero bytes, truncated JPEG and
  PNG, an HTML page named .png), exact duplicates across and within sources,
  near duplicates (the same pixels re-encoded), and a mix of JPEG and PNG in
  RGB, greyscale ('L'), RGBA and palette ('P') modes.

Each class is a (shape, foreground colour, background colour) triple, drawn
with jittered position, size, angle, colours and pixel noise; `real_world`
images add background clutter and a lighting gradient. Colour carries the
class, and (background, shape) alone also identifies it, so the few greyscale
images stay learnable. A tiny model learns the 30 classes at 64 px from
scratch in a few CPU minutes. Drawing and encoding live in `demo_images`;
this module plans the lake and writes it.

The output is a pure function of (seed, per_class): every image has its own
random stream keyed on its role and index, files are written in sorted order
with fixed encoder settings and no metadata, so the same seed gives
byte-identical files.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import UsageError
from ..taxonomy import MASTER_30, MASTER_30_SETS
from .demo_images import IMAGE_SIZE, class_style, encode_image, render_image, style_dict

log = logging.getLogger("sustain.data.demo")

DEFAULT_PER_CLASS = 40  # master images per class, half default / half real_world
MARKER = "demo_lake.json"  # written last; identifies a finished demo lake
PLANTED_CSV = "planted_label_noise.csv"  # at the lake's root: the wrong labels planted on purpose
PLANTED_FRACTION = 0.02  # of the master source's images

MASTER_ROOT = "master/images/images"
COARSE_ROOT = "coarse"
# Coarse folder -> the set its images are drawn from (None: any class).
COARSE_FOLDERS: dict[str, str | None] = {
    "cardboard": "CARDBOARD",
    "glass": "GLASS",
    "metal": "METAL",
    "organic": "ORGANIC",
    "paper": "PAPER",
    "plastic": "PLASTIC",
    "trash": None,  # demo.yaml: trash -> null (dropped)
}
UNMAPPED_FOLDER = "misc_unsorted"  # in no label_map: the unmapped report lists it

# (format, mode, share of images). Greyscale stays a small share: it drops the
# foreground colour, leaving background brightness and shape as the cue.
ENCODINGS: tuple[tuple[str, str, float], ...] = (
    ("JPEG", "RGB", 0.62),
    ("PNG", "RGB", 0.16),
    ("PNG", "RGBA", 0.06),
    ("PNG", "P", 0.08),
    ("JPEG", "L", 0.04),
    ("PNG", "L", 0.04),
)
JPEG_SUFFIXES = (".jpg", ".jpg", ".jpg", ".jpg", ".jpeg", ".JPG")  # real lakes mix them

# Random streams, one per role, so adding images of one kind never shifts another.
_STREAM_MASTER, _STREAM_COARSE, _STREAM_PLAN, _STREAM_EXTRA, _STREAM_NOISE = range(5)


@dataclass(frozen=True)
class _Item:
    """One image to write: where, which class it shows, and how it is drawn."""

    relpath: str  # without suffix; the encoding adds it
    class_index: int
    clutter: bool
    stream: tuple[int, ...]


# --------------------------------------------------------------------------- planning (pure)


def _plan_items(per_class: int, per_coarse: int, per_unmapped: int, seed: int) -> list[_Item]:
    items: list[_Item] = []
    n_default = (per_class + 1) // 2
    for ci, name in enumerate(MASTER_30):
        for i in range(per_class):
            sub = "default" if i < n_default else "real_world"
            items.append(_Item(f"{MASTER_ROOT}/{name}/{sub}/img_{i:04d}", ci, sub == "real_world",
                               (seed, _STREAM_MASTER, ci, i)))
    folders = {**COARSE_FOLDERS, UNMAPPED_FOLDER: None}
    pick = np.random.default_rng((seed, _STREAM_PLAN))
    for fi, (folder, set_name) in enumerate(sorted(folders.items())):
        pool = [MASTER_30.index(c) for c in MASTER_30_SETS[set_name]] if set_name else list(range(len(MASTER_30)))
        count = per_unmapped if folder == UNMAPPED_FOLDER else per_coarse
        for i in range(count):
            ci = int(pool[int(pick.integers(len(pool)))])
            items.append(_Item(f"{COARSE_ROOT}/{folder}/{folder}_{i:04d}", ci, bool(pick.random() < 0.5),
                               (seed, _STREAM_COARSE, fi, i)))
    return items


def _plant_noise(items: list[_Item], seed: int, fraction: float = PLANTED_FRACTION) -> list[_Item]:
    """The master items whose picture shows another class than their folder: their `class_index`
    is the class drawn, the folder in `relpath` the (wrong) label. Always at least one."""
    master = [i for i, item in enumerate(items) if item.relpath.startswith(MASTER_ROOT + "/")]
    rng = np.random.default_rng((seed, _STREAM_NOISE))
    chosen = sorted(rng.choice(master, size=max(1, round(fraction * len(master))), replace=False).tolist())
    for i in chosen:
        shift = 1 + int(rng.integers(len(MASTER_30) - 1))  # any other class
        items[i] = dataclasses.replace(items[i], class_index=(items[i].class_index + shift) % len(MASTER_30))
    return [items[i] for i in chosen]


def _plan_encodings(n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Exactly proportional shares (every kind at least once), in shuffled order."""
    counts = [max(1, int(round(share * n))) for _, _, share in ENCODINGS]
    counts[0] += n - sum(counts)  # JPEG/RGB absorbs the rounding
    plan = [(fmt, mode) for (fmt, mode, _), k in zip(ENCODINGS, counts, strict=True) for _ in range(k)]
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]


def _suffix(fmt: str, rng: np.random.Generator) -> str:
    return JPEG_SUFFIXES[int(rng.integers(len(JPEG_SUFFIXES)))] if fmt == "JPEG" else ".png"


# --------------------------------------------------------------------------- writing (effects)


def make_demo_lake(out_dir: str | Path, seed: int = 0, per_class: int | None = None) -> dict[str, Any]:
    """Generate the demo lake in `out_dir` and return its stats (also saved as demo_lake.json).

    `per_class` is the number of master images per class (default 40); each
    coarse folder gets about 3/8 of that. An existing demo lake in `out_dir`
    is replaced; any other non-empty folder is refused.
    """
    per_class = DEFAULT_PER_CLASS if per_class is None else int(per_class)
    if per_class < 2:
        raise UsageError(f"--per-class must be at least 2 (got {per_class})",
                         "each class needs a default and a real_world image")
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise UsageError(f"Demo lake output {out} is a file", "pass a folder to --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise UsageError(f"{out} is not empty and holds no demo lake ({MARKER} is missing)",
                         "choose an empty or new folder for --out")

    # Build next to the target and move into place at the end: an interrupted run
    # never leaves a half lake that `--if-missing` would then accept.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        stats = _write_lake(staging, seed, per_class)
        _replace_lake(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.debug("demo lake: %d files, %d corrupt, %d duplicate pairs", stats["files"], len(stats["corrupt"]),
              len(stats["duplicates"]))
    return stats


def _replace_lake(staging: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in (MASTER_ROOT.split("/")[0], COARSE_ROOT, PLANTED_CSV, MARKER):
        old = out / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    for name in (MASTER_ROOT.split("/")[0], COARSE_ROOT, PLANTED_CSV, MARKER):  # the marker last
        os.replace(staging / name, out / name)


def _write_lake(root: Path, seed: int, per_class: int) -> dict[str, Any]:
    per_coarse = max(4, per_class * 3 // 8)
    per_unmapped = max(2, per_class // 8)
    items = _plan_items(per_class, per_coarse, per_unmapped, seed)
    planted = {item.relpath for item in _plant_noise(items, seed)}
    plan_rng = np.random.default_rng((seed, _STREAM_PLAN, 1))
    encodings = _plan_encodings(len(items), plan_rng)

    written: dict[str, bytes] = {}  # relpath -> bytes, in write order
    labels: dict[str, int] = {}  # relpath -> the class the image shows
    formats: dict[str, int] = {}
    for item, (fmt, mode) in zip(items, encodings, strict=True):
        image = render_image(class_style(item.class_index), np.random.default_rng(item.stream),
                             clutter=item.clutter)
        relpath = item.relpath + _suffix(fmt, plan_rng)
        written[relpath] = encode_image(image, fmt, mode)
        labels[relpath] = item.class_index
        formats[f"{fmt}/{mode}"] = formats.get(f"{fmt}/{mode}", 0) + 1

    extra_rng = np.random.default_rng((seed, _STREAM_EXTRA))
    noisy = {p for p in written if p.rsplit(".", 1)[0] in planted}
    duplicates, near_duplicates = _add_duplicates(written, labels, extra_rng, avoid=noisy)
    corrupt = _add_corrupt(written, extra_rng)

    for relpath in sorted(written):
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(written[relpath])

    corrupt_set = set(corrupt)
    per_class_counts = {name: 0 for name in MASTER_30}
    per_folder = {folder: 0 for folder in sorted({*COARSE_FOLDERS, UNMAPPED_FOLDER})}
    for relpath in written:
        if relpath in corrupt_set:
            continue
        parts = relpath.split("/")
        if relpath.startswith(MASTER_ROOT + "/"):
            per_class_counts[parts[3]] += 1
        else:
            per_folder[parts[1]] += 1
    stats = {
        "seed": seed,
        "image_size": IMAGE_SIZE,
        "sources": {"master": MASTER_ROOT, "coarse": COARSE_ROOT},
        "files": len(written),
        "images": len(written) - len(corrupt),
        "bytes": sum(len(b) for b in written.values()),
        "corrupt": sorted(corrupt),
        "duplicates": duplicates,
        "near_duplicates": near_duplicates,
        "per_class": per_class_counts,
        "per_folder": per_folder,
        "unmapped_folders": [UNMAPPED_FOLDER],
        "formats": dict(sorted(formats.items())),
        "styles": {name: style_dict(class_style(i)) for i, name in enumerate(MASTER_30)},
    }
    stats["planted_label_noise"] = _write_planted(root, sorted(noisy), labels)
    (root / MARKER).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats


def _write_planted(root: Path, noisy: list[str], labels: dict[str, int]) -> int:
    """`planted_label_noise.csv`: each planted file (relative to the lake root), its folder's label and
    the class its picture shows."""
    rows = ["path,given_label,true_label"] + [f"{p},{p.split('/')[3]},{MASTER_30[labels[p]]}" for p in noisy]
    (root / PLANTED_CSV).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return len(noisy)


def _next_path(written: dict[str, bytes], directory: str, stem: str, suffix: str) -> str:
    """The next free `<stem>_NNNN<suffix>` in a folder, so extras look like their neighbours."""
    taken = {Path(p).stem for p in written if p.rsplit("/", 1)[0] == directory}
    i = len(taken)
    while f"{stem}_{i:04d}" in taken:
        i += 1
    return f"{directory}/{stem}_{i:04d}{suffix}"


def _add_duplicates(written: dict[str, bytes], labels: dict[str, int], rng: np.random.Generator,
                    avoid: set[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Exact copies of master images in the coarse folder of their set (same true label),
    one exact copy within the master source, and two near duplicates (re-encoded pixels).
    A planted wrong label (`avoid`) is never copied: its copy would conflict, not merge."""
    master = sorted(p for p in written if p.startswith(MASTER_ROOT + "/") and p not in avoid)

    def pick_master(set_name: str | None) -> str:
        pool = [p for p in master if set_name is None or MASTER_30[labels[p]] in MASTER_30_SETS[set_name]]
        return pool[int(rng.integers(len(pool)))]

    duplicates: list[list[str]] = []
    for folder in ("glass", "metal", "paper", "plastic"):
        src = pick_master(COARSE_FOLDERS[folder])
        dst = _next_path(written, f"{COARSE_ROOT}/{folder}", folder, Path(src).suffix)
        written[dst] = written[src]
        duplicates.append([src, dst])

    src = pick_master(None)  # within master: filed again in the other subfolder of its class
    class_dir, sub = src.rsplit("/", 2)[:2]
    other = "real_world" if sub == "default" else "default"
    dst = _next_path(written, f"{class_dir}/{other}", "img", Path(src).suffix)
    written[dst] = written[src]
    duplicates.append([src, dst])

    near: list[list[str]] = []
    for folder in ("cardboard", "organic"):
        src = pick_master(COARSE_FOLDERS[folder])
        pixels = Image.open(io.BytesIO(written[src])).convert("RGB")
        fmt = "PNG" if Path(src).suffix.lower() in (".jpg", ".jpeg") else "JPEG"
        dst = _next_path(written, f"{COARSE_ROOT}/{folder}", folder, ".png" if fmt == "PNG" else ".jpg")
        written[dst] = encode_image(pixels, fmt, "RGB")
        near.append([src, dst])
    return sorted(duplicates), sorted(near)


def _add_corrupt(written: dict[str, bytes], rng: np.random.Generator) -> list[str]:
    """Broken files inside labelled folders, named like their neighbours."""
    def valid(fmt: str) -> bytes:
        image = render_image(class_style(int(rng.integers(len(MASTER_30)))), rng)
        return encode_image(image, fmt, "RGB")

    jpeg, png = valid("JPEG"), valid("PNG")
    html = b"<!DOCTYPE html>\n<html><body><h1>404 Not Found</h1></body></html>\n"  # a failed download
    broken = [  # (folder, stem, suffix, content)
        (f"{MASTER_ROOT}/{MASTER_30[3]}/default", "img", ".jpg", b""),  # zero bytes
        (f"{MASTER_ROOT}/{MASTER_30[17]}/real_world", "img", ".jpg", jpeg[: len(jpeg) // 2]),  # truncated JPEG
        (f"{MASTER_ROOT}/{MASTER_30[24]}/default", "img", ".png", png[: len(png) // 3]),  # truncated PNG
        (f"{COARSE_ROOT}/paper", "paper", ".png", html),  # not an image at all
        (f"{COARSE_ROOT}/organic", "organic", ".jpg", b""),  # zero bytes
    ]
    paths = []
    for folder, stem, suffix, content in broken:
        path = _next_path(written, folder, stem, suffix)
        written[path] = content
        paths.append(path)
    return sorted(paths)

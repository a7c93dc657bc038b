"""The procedural demo data lake: `sustain data demo --out DIR` (SPEC §8).

It mimics the real lake of SPEC §4 at toy scale, so that `make train` and the
tests exercise every ingestion path without downloading anything:

- `master/images/images/<class>/{default,real_world}/`: the master_30 layout,
  all 30 classes (configs/demo.yaml maps it with `label_map: identity`);
- `coarse/<folder>/`: a coarse source whose folders map to the set labels
  PLASTIC, METAL, ... Each coarse image is drawn from a fine class of that set,
  so the set label is true. `trash` maps to null (dropped) and `misc_unsorted`
  maps to nothing (it shows up in the unmapped report);
- a few corrupt files inside class folders (zero bytes, truncated JPEG and
  PNG, an HTML page named .png), exact duplicates across and within sources,
  near duplicates (the same pixels re-encoded), and a mix of JPEG and PNG in
  RGB, greyscale ('L'), RGBA and palette ('P') modes.

Each class is a (shape, foreground colour, background colour) triple, drawn
with jittered position, size, angle, colours and pixel noise; `real_world`
images add background clutter and a lighting gradient. Colour carries the
class, and (background, shape) alone also identifies it, so the few greyscale
images stay learnable. A tiny model learns the 30 classes at 64 px from
scratch in a few CPU minutes.

The output is a pure function of (seed, per_class): every image has its own
random stream keyed on its role and index, files are written in sorted order
with fixed encoder settings and no metadata, so the same seed gives
byte-identical files.
"""

from __future__ import annotations

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
from PIL import Image, ImageDraw

from ..errors import UsageError
from ..taxonomy import MASTER_30, MASTER_30_SETS

log = logging.getLogger("sustain.data.demo")

IMAGE_SIZE = 64
DEFAULT_PER_CLASS = 40  # master images per class, half default / half real_world
MARKER = "demo_lake.json"  # written last; identifies a finished demo lake

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

SHAPES = ("circle", "square", "triangle", "ring", "cross", "stripes")
FOREGROUNDS = (  # bright, saturated
    (220, 40, 40),
    (40, 185, 60),
    (45, 85, 235),
    (240, 215, 35),
    (205, 50, 205),
    (40, 215, 225),
)
BACKGROUNDS = (  # dull, and spread in luminance so greyscale keeps them apart
    (22, 22, 28),
    (236, 232, 218),
    (128, 128, 128),
    (112, 78, 40),
    (58, 38, 98),
)

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
_STREAM_MASTER, _STREAM_COARSE, _STREAM_PLAN, _STREAM_EXTRA = range(4)


@dataclass(frozen=True)
class ClassStyle:
    shape: str
    foreground: tuple[int, int, int]
    background: tuple[int, int, int]


@dataclass(frozen=True)
class _Item:
    """One image to write: where, which class it shows, and how it is drawn."""

    relpath: str  # without suffix; the encoding adds it
    class_index: int
    clutter: bool
    stream: tuple[int, ...]


def class_style(index: int) -> ClassStyle:
    """The look of class `index` (0..29): unique (fg, bg) pair and unique (bg, shape) pair."""
    if not 0 <= index < len(FOREGROUNDS) * len(BACKGROUNDS):
        raise ValueError(f"the demo lake draws {len(FOREGROUNDS) * len(BACKGROUNDS)} classes, not index {index}")
    return ClassStyle(
        shape=SHAPES[index % len(SHAPES)],
        foreground=FOREGROUNDS[index // len(BACKGROUNDS)],
        background=BACKGROUNDS[index % len(BACKGROUNDS)],
    )


# --------------------------------------------------------------------------- drawing (pure)


def _jitter(colour: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    values = np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return tuple(int(v) for v in values)


def _rotated(points: list[tuple[float, float]], cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _bar(cx: float, cy: float, half_len: float, half_w: float, angle: float, offset: float = 0.0):
    corners = [(-half_len, offset - half_w), (half_len, offset - half_w),
               (half_len, offset + half_w), (-half_len, offset + half_w)]
    return _rotated(corners, cx, cy, angle)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                angle: float, colour: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=max(2, int(r * 0.38)))
    elif shape == "square":
        draw.polygon(_bar(cx, cy, r * 0.8, r * 0.8, angle), fill=colour)
    elif shape == "triangle":
        pts = [(r * 1.1 * np.cos(t), r * 1.1 * np.sin(t)) for t in np.deg2rad([-90, 30, 150])]
        draw.polygon(_rotated(pts, cx, cy, angle), fill=colour)
    elif shape == "cross":
        draw.polygon(_bar(cx, cy, r, r * 0.25, angle), fill=colour)
        draw.polygon(_bar(cx, cy, r, r * 0.25, angle + np.pi / 2), fill=colour)
    elif shape == "stripes":
        for offset in (-0.7, 0.0, 0.7):
            draw.polygon(_bar(cx, cy, r, r * 0.18, angle, offset * r), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_image(style: ClassStyle, rng: np.random.Generator, size: int = IMAGE_SIZE,
                 clutter: bool = False) -> Image.Image:
    """Draw one RGB image of a class. `clutter` adds real_world-style distractors."""
    big = size * 2  # draw at 2x and box-filter down: smooth edges without antialiasing support
    background = _jitter(style.background, rng, 14)
    image = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(image)
    if clutter:  # low-contrast lines and blobs near the background colour
        for _ in range(int(rng.integers(3, 7))):
            x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, big, size=4))
            colour = _jitter(background, rng, 55)
            if rng.random() < 0.5:
                draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 7)))
            else:
                draw.rectangle((min(x0, x1), min(y0, y1), min(x0, x1) + big / 6, min(y0, y1) + big / 6), fill=colour)
    cx, cy = (float(v) for v in big / 2 + rng.uniform(-0.12, 0.12, size=2) * big)
    radius = float(rng.uniform(0.2, 0.3)) * big
    angle = float(np.deg2rad(rng.uniform(-20, 20)))
    _draw_shape(draw, style.shape, cx, cy, radius, angle, _jitter(style.foreground, rng, 20))
    pixels = np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    if clutter:  # uneven lighting
        ramp = np.linspace(float(rng.uniform(0.75, 0.95)), float(rng.uniform(1.0, 1.15)), size, dtype=np.float32)
        pixels = pixels * (ramp[:, None, None] if rng.random() < 0.5 else ramp[None, :, None])
    pixels = pixels + rng.normal(0.0, 11.0 if clutter else 7.0, size=pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def encode_image(image: Image.Image, fmt: str, mode: str) -> bytes:
    """Encode with fixed settings and no metadata, so equal pixels give equal bytes."""
    if mode == "RGBA":  # opaque object, transparent corners: a cut-out product photo
        alpha = Image.new("L", image.size, 255)
        w, h = image.size
        ImageDraw.Draw(alpha).rectangle((0, 0, w // 8, h // 8), fill=0)
        ImageDraw.Draw(alpha).rectangle((w - w // 8, h - h // 8, w, h), fill=0)
        image = image.copy()
        image.putalpha(alpha)
    elif mode == "P":
        image = image.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    elif mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, "JPEG", quality=88, subsampling=0, optimize=False, progressive=False)
    else:
        image.save(buffer, "PNG", compress_level=6, optimize=False)
    return buffer.getvalue()


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
    for name in (MASTER_ROOT.split("/")[0], COARSE_ROOT, MARKER):
        old = out / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    for name in (MASTER_ROOT.split("/")[0], COARSE_ROOT, MARKER):  # the marker last
        os.replace(staging / name, out / name)


def _write_lake(root: Path, seed: int, per_class: int) -> dict[str, Any]:
    per_coarse = max(4, per_class * 3 // 8)
    per_unmapped = max(2, per_class // 8)
    items = _plan_items(per_class, per_coarse, per_unmapped, seed)
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
    duplicates, near_duplicates = _add_duplicates(written, labels, extra_rng)
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
        "styles": {name: _style_dict(class_style(i)) for i, name in enumerate(MASTER_30)},
    }
    (root / MARKER).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats


def _style_dict(style: ClassStyle) -> dict[str, Any]:
    return {"shape": style.shape, "foreground": list(style.foreground), "background": list(style.background)}


def _next_path(written: dict[str, bytes], directory: str, stem: str, suffix: str) -> str:
    """The next free `<stem>_NNNN<suffix>` in a folder, so extras look like their neighbours."""
    taken = {Path(p).stem for p in written if p.rsplit("/", 1)[0] == directory}
    i = len(taken)
    while f"{stem}_{i:04d}" in taken:
        i += 1
    return f"{directory}/{stem}_{i:04d}{suffix}"


def _add_duplicates(written: dict[str, bytes], labels: dict[str, int],
                    rng: np.random.Generator) -> tuple[list[list[str]], list[list[str]]]:
    """Exact copies of master images in the coarse folder of their set (same true label),
    one exact copy within the master source, and two near duplicates (re-encoded pixels)."""
    master = sorted(p for p in written if p.startswith(MASTER_ROOT + "/"))

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

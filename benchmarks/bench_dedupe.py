"""Near-duplicate benchmark: recall per transform and false merges, on real photos (issue 10).

    python -m benchmarks.bench_dedupe [--tile 112] [--copies 4] [--seed 0] [--json FILE]

The set is built from photographs that packages ship (scikit-image's
`skimage.data` and scikit-learn's sample images), so it needs no download:

- distinct images: the non-overlapping `tile`-pixel tiles of each photo
  (flat tiles, a plain sky or a black background, are left out: two of them
  are the same picture). Half are stored as PNG, half as JPEG q95;
- copies: each transform below applied to `copies` tiles per photo, chosen
  with a seeded generator, and written to its own file.

Every file goes through the real decoder (`sustain.data.scan.decode_file`)
and the real grouping (`sustain.data.split.near_duplicate_groups`) with the
default `data.near_duplicate_distance` and verifier (`split.VERIFY_DISTANCE`,
`split.MIN_CORRELATION`). Recall of a transform is the share of
its copies grouped with their original; a false merge is a distinct tile
grouped with another distinct tile. Goals: recall >= 99% for resizing and
re-encoding, >= 95% for border crops and mirroring, false merges <= 0.5%.

The tests run the same set at a small size (tests/data/test_data_dedupe.py).
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import arg_parser, write_result

# Photos with natural content; textures (brick, grass, gravel) are hard negatives.
SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "immunohistochemistry",
                  "hubble_deep_field", "retina", "cell", "clock", "moon", "brick", "grass", "gravel")
MIN_TILE_STD = 8.0  # grey-level standard deviation below which a tile is flat

Transform = Callable[[Image.Image, np.random.Generator], tuple[Image.Image, str, dict]]

# Goals of issue 10: kind -> minimum recall.
RECALL_GOALS = {"resize": 0.99, "re-encode": 0.99, "border crop": 0.95, "mirror": 0.95}
FALSE_MERGE_GOAL = 0.005


def load_photos() -> dict[str, np.ndarray]:
    """name -> RGB uint8 array, from skimage.data and sklearn's sample images."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = {}
    for name in SKIMAGE_PHOTOS:
        arr = getattr(skimage.data, name)()
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        photos[name] = np.ascontiguousarray(arr[..., :3]).astype(np.uint8)
    sample = load_sample_images()
    for name, arr in zip(sample.filenames, sample.images, strict=True):
        photos[Path(name).stem] = arr
    left = skimage.data.stereo_motorcycle()[0]  # the right view is a near duplicate of it: left out
    photos["motorcycle"] = left
    return photos


def tiles(photo: np.ndarray, size: int) -> list[np.ndarray]:
    """The non-overlapping size x size tiles that are not flat."""
    out = []
    for y in range(0, photo.shape[0] - size + 1, size):
        for x in range(0, photo.shape[1] - size + 1, size):
            tile = photo[y:y + size, x:x + size]
            if tile.mean(axis=-1).std() >= MIN_TILE_STD:
                out.append(tile)
    return out


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


_FILTERS = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC,
            Image.Resampling.LANCZOS, Image.Resampling.BOX)


def _resize(factor: float) -> Transform:
    def apply(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
        size = (max(8, round(img.width * factor)), max(8, round(img.height * factor)))
        return img.resize(size, _FILTERS[int(rng.integers(len(_FILTERS)))]), "PNG", {}
    return apply


def _jpeg(quality: int) -> Transform:
    return lambda img, rng: (img, "JPEG", {"quality": quality})


def _border_crop(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    w, h = img.size
    left, top, right, bottom = rng.uniform(0.03, 0.06, 4)
    box = (round(w * left), round(h * top), w - round(w * right), h - round(h * bottom))
    return img.crop(box), "JPEG", {"quality": 90}


def _crop_resize(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    cropped, _, _ = _border_crop(img, rng)
    factor = rng.uniform(0.5, 2.0)
    return cropped.resize((round(cropped.width * factor), round(cropped.height * factor)),
                          Image.Resampling.BICUBIC), "JPEG", {"quality": 80}


# name -> (kind, transform). 'kind' is what the goals are stated for.
TRANSFORMS: dict[str, tuple[str, Transform]] = {
    "resize x0.5": ("resize", _resize(0.5)),
    "resize x0.9": ("resize", _resize(0.9)),
    "resize x1.03": ("resize", _resize(1.03)),
    "resize x1.5": ("resize", _resize(1.5)),
    "resize x2": ("resize", _resize(2.0)),
    "JPEG q50": ("re-encode", _jpeg(50)),
    "JPEG q60": ("re-encode", _jpeg(60)),
    "JPEG q90": ("re-encode", _jpeg(90)),
    "WebP q80": ("re-encode", lambda img, rng: (img, "WEBP", {"quality": 80})),
    "PNG<->JPEG": ("re-encode", None),  # the other format of the original, see make_set
    "border crop 3-6%": ("border crop", _border_crop),
    "mirror": ("mirror", lambda img, rng: (img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "JPEG", {"quality": 90})),
    "crop + resize + JPEG": ("combined", _crop_resize),
    "mirror + resize": ("combined", lambda img, rng: (
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((img.width * 3 // 4, img.height * 3 // 4),
                                                             Image.Resampling.BILINEAR), "PNG", {})),
}


@dataclass
class DedupeSet:
    files: list[Path]
    original: list[int]  # per file: index of its distinct original (itself for an original)
    transform: list[str | None]  # per file: the transform that made it (None for an original)


def make_set(out: Path, tile: int = 112, copies: int = 2, seed: int = 0,
             photos: dict[str, np.ndarray] | None = None, max_tiles: int | None = None) -> DedupeSet:
    """Write the distinct tiles and their transformed copies under `out`."""
    rng = np.random.default_rng(seed)
    photos = load_photos() if photos is None else photos
    out.mkdir(parents=True, exist_ok=True)
    result = DedupeSet([], [], [])

    def write(data: bytes, name: str, original: int, transform: str | None) -> None:
        path = out / name
        path.write_bytes(data)
        result.files.append(path)
        result.original.append(len(result.files) - 1 if original < 0 else original)
        result.transform.append(transform)

    for pname in sorted(photos):
        pieces = tiles(photos[pname], tile)[:max_tiles]
        index = []
        for i, arr in enumerate(pieces):
            img = Image.fromarray(arr)
            as_png = (i % 2 == 0)
            data = _encode(img, "PNG") if as_png else _encode(img, "JPEG", quality=95)
            write(data, f"{pname}_{i:03d}.{'png' if as_png else 'jpg'}", -1, None)
            index.append((len(result.files) - 1, as_png))
        for t, (name, (_, fn)) in enumerate(TRANSFORMS.items()):
            chosen = rng.choice(len(pieces), size=min(copies, len(pieces)), replace=False)
            for i in chosen:
                original, as_png = index[i]
                img = Image.open(result.files[original]).convert("RGB")
                if fn is None:
                    data, ext = (_encode(img, "JPEG", quality=75), "jpg") if as_png else (_encode(img, "PNG"), "png")
                else:
                    copy, fmt, kwargs = fn(img, rng)
                    data, ext = _encode(copy, fmt, **kwargs), fmt.lower().replace("jpeg", "jpg")
                write(data, f"{pname}_{i:03d}_t{t:02d}.{ext}", original, name)
    return result


def measure(dataset: DedupeSet, distance: int | None = None) -> dict:
    """Decode every file and group; recall per transform and false merges among the originals."""
    from sustain.config import DataConfig
    from sustain.data.scan import decode_file
    from sustain.data.split import near_duplicate_groups

    distance = DataConfig.model_fields["near_duplicate_distance"].default if distance is None else distance
    start = time.perf_counter()
    decoded = [decode_file(str(p), 10**9) for p in dataset.files]
    decode_seconds = time.perf_counter() - start
    assert all(r.ok for r in decoded), [r.reason for r in decoded if not r.ok]
    signatures = [r.signature for r in decoded]
    originals = [i for i, t in enumerate(dataset.transform) if t is None]
    start = time.perf_counter()
    groups = near_duplicate_groups(signatures, distance)  # everything at once: the timing, and the false merges
    group_seconds = time.perf_counter() - start

    # Each transform is grouped with the originals alone, so copies made by other transforms
    # cannot bridge a copy to its original.
    hits: dict[str, list[int]] = {}
    for name in TRANSFORMS:
        members = originals + [i for i, t in enumerate(dataset.transform) if t == name]
        if len(members) == len(originals):
            continue
        labels = dict(zip(members, near_duplicate_groups([signatures[i] for i in members], distance).tolist(),
                          strict=True))
        found = [labels[i] == labels[dataset.original[i]] for i in members[len(originals):]]
        hits[name] = [sum(found), len(found)]
    per_group: dict[int, int] = defaultdict(int)
    for i in originals:
        per_group[int(groups[i])] += 1
    merged = sum(1 for i in originals if per_group[int(groups[i])] > 1)
    return {
        "distance": distance,
        "distinct": len(originals),
        "copies": len(dataset.files) - len(originals),
        "recall": {name: {"kind": TRANSFORMS[name][0], "found": h[0], "of": h[1], "recall": round(h[0] / h[1], 4)}
                   for name, h in hits.items()},
        "false_merges": merged,
        "false_merge_rate": round(merged / len(originals), 4),
        "decode_seconds": round(decode_seconds, 2),
        "group_seconds": round(group_seconds, 4),
    }


def recall_by_kind(result: dict) -> dict[str, dict]:
    """Recall of each kind of transform (the goals are stated per kind), all its copies together."""
    kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in result["recall"].values():
        kinds[r["kind"]][0] += r["found"]
        kinds[r["kind"]][1] += r["of"]
    return {k: {"found": f, "of": n, "recall": round(f / n, 4)} for k, (f, n) in kinds.items()}


def goals_missed(result: dict) -> list[str]:
    """The goals that the result misses (empty when all are met)."""
    missed = []
    for kind, r in recall_by_kind(result).items():
        goal = RECALL_GOALS.get(kind)
        if goal is not None and r["recall"] < goal:
            missed.append(f"{kind}: recall {r['recall']:.1%} < {goal:.0%}")
    if result["false_merge_rate"] > FALSE_MERGE_GOAL:
        missed.append(f"false merges {result['false_merge_rate']:.2%} > {FALSE_MERGE_GOAL:.1%}")
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--tile", type=int, default=112, help="tile size in pixels")
    parser.add_argument("--copies", type=int, default=4, help="copies per transform and photo")
    parser.add_argument("--seed", type=int, default=0, help="seed of the choice of tiles and of the transforms")
    parser.add_argument("--distance", type=int, help="data.near_duplicate_distance (default: the config's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="sustain_dedupe_") as tmp:
        dataset = make_set(Path(tmp), tile=args.tile, copies=args.copies, seed=args.seed)
        result = measure(dataset, args.distance)
    print(f"near duplicates: {result['distinct']:,} distinct {args.tile}px tiles of real photos, "
          f"{result['copies']:,} copies, Hamming <= {result['distance']}")
    for name, r in result["recall"].items():
        print(f"  {name:<22} {r['kind']:<12} {r['found']:>4} / {r['of']:<4} recall {r['recall']:.1%}")
    print("  by kind:")
    for kind, r in recall_by_kind(result).items():
        goal = RECALL_GOALS.get(kind)
        print(f"    {kind:<12} {r['found']:>4} / {r['of']:<4} recall {r['recall']:.1%}"
              + (f" (goal >= {goal:.0%})" if goal else " (no goal)"))
    print(f"  false merges: {result['false_merges']} of {result['distinct']} distinct tiles "
          f"({result['false_merge_rate']:.2%}, goal <= {FALSE_MERGE_GOAL:.1%}); "
          f"grouping {result['group_seconds'] * 1000:.1f} ms")
    missed = goals_missed(result)
    for line in missed:
        print(f"  ✗ goal missed: {line}")
    if args.json:
        write_result(args.json, result)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

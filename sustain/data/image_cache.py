"""The training-resolution image cache: each photo decoded once, stored small.

A 12-megapixel phone photo costs ~130 ms to decode and resize on one core,
every epoch; the model sees 224 px of it. The cache keeps a copy whose shorter
side is `side` pixels (a JPEG at quality 95, a few tens of KB), so every later
read costs a millisecond or two. Ingestion fills the entry of each file it
decodes, from the bytes it read anyway (in its decode workers); a file it did
not decode (already in the decode cache) is filled on its first read. Either
way JPEG draft decoding (libjpeg's DCT scaling, 1/2 to 1/8) skips most of the
full-size work, then a Lanczos resize gives the stored size exactly.

- Entries are keyed like the decode cache, by absolute path, size and mtime
  (plus the stored side and a format version): a changed file gets a new
  entry, never a stale one.
- A miss returns the image decoded from the bytes it stores, so a hit and a
  miss give the same pixels: results do not depend on which worker, epoch or
  process filled the entry (exact resume, worker-count independence).
- Each entry is written to a unique temporary file and renamed into place, so
  loader workers and DDP ranks may fill and read it concurrently; a folder
  that cannot be written just leaves the cache empty (counted, logged once).
- Images already at or below the stored size are read from the original.

Every pixel-limit, truncation and corruption check of `scan.load_rgb` still
runs on a miss; a hit reads only files this cache wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .scan import (
    UNREADABLE,
    CorruptImage,
    load_rgb_sized,
)

log = logging.getLogger("sustain.data.image_cache")

CACHE_VERSION = "1"  # bump when the stored pixels for the same file would change
QUALITY = 95  # JPEG quality of the stored copies: visually lossless, ~10x smaller than the pixels
FOLDER = "images"  # under the decode cache's folder


def stored_side(input_size: int, crop_pct: float, setting: str | int = "auto") -> int | None:
    """The shorter side of the stored copies, or None for no cache.

    `auto` stores what the eval transform resizes to (input / crop_pct, e.g.
    256 px for 224 at crop_pct 0.875), as FFCV's `max_resolution` does; the
    smallest random-resized crops are then upsampled a little, which costs no
    accuracy in our measurements (benchmarks/bench_cache_agreement.py). An
    integer stores that many pixels instead (e.g. input / sqrt(crop_scale_min)
    for crops without any upsampling).
    """
    if setting == "off":
        return None
    if setting == "auto":
        return math.ceil(input_size / max(crop_pct, 1e-6))
    return int(setting)


def load_reduced(source: str | Path | bytes, min_side: int, max_pixels: int | None = None
                 ) -> tuple[Image.Image, tuple[int, int]]:
    """Decode an image to 8-bit RGB whose shorter side is at least `min_side`, as cheaply as the format allows.

    For a JPEG, the decoder scales the DCT by 1/2, 1/4 or 1/8 where that keeps
    both sides at or above `min_side`; other formats decode in full. Returns the
    image and the full-size (width, height) after EXIF orientation, which is what
    `scan.load_rgb(...).size` would be. The same checks and reasons as `load_rgb`:
    zero bytes, not an image, over the pixel limit, truncated, decode error.
    """
    return load_rgb_sized(source, max_pixels, draft_side=min_side)


def shrink(img: Image.Image, side: int) -> Image.Image:
    """Resize so the shorter side is `side` (Lanczos); an image already that small is returned as is."""
    width, height = img.size
    if min(width, height) <= side:
        return img
    if width <= height:
        width, height = side, max(1, round(height * side / width))
    else:
        width, height = max(1, round(width * side / height)), side
    return img.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)


def encode(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=QUALITY, subsampling=0)  # 4:4:4: colour edges matter for glass vs plastic
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


@dataclass
class ImageCache:
    """Stored copies under `directory`, shorter side `side` px. Picklable: loader workers get a copy."""

    directory: str
    side: int
    max_pixels: int | None = None
    write_failures: int = 0
    filled: int = 0  # entries this process made (tried to write), on a first read or from ingestion

    def entry(self, path: str, size: int, mtime_ns: int) -> Path:
        key = hashlib.sha256(f"{CACHE_VERSION}\0{self.side}\0{path}\0{size}\0{mtime_ns}".encode()).hexdigest()
        return Path(self.directory) / key[:2] / f"{key[2:]}.jpg"

    def load(self, path: str) -> Image.Image:
        """The image at training resolution: from its entry, or decoded now and stored. Raises CorruptImage."""
        try:
            st = os.stat(path)
        except OSError as exc:
            raise CorruptImage(f"{UNREADABLE}: {exc.strerror or exc}") from None
        target = self.entry(os.path.abspath(path), st.st_size, st.st_mtime_ns)
        try:
            return decode(target.read_bytes())
        except OSError:  # no entry yet (or no folder to hold one)
            pass
        except Exception as exc:  # a damaged entry (e.g. a full disk): decode the original again
            log.warning("⚠️  Image cache entry %s for %s is unreadable (%s): re-creating it", target, path, exc)
        img, _ = load_reduced(path, self.side, self.max_pixels)
        data = self._store(target, img)
        return img if data is None else decode(data)  # the same pixels a later hit will read

    def fill(self, path: str, data: bytes, size: int, mtime_ns: int, decoded: Image.Image | None = None) -> None:
        """Write the entry of `path` from its bytes, read once by ingestion (`scan.decode_file`'s
        `fill`), so the first epoch reads small copies too; the same pixels as a fill on first read.
        `decoded`, ingestion's own decode of those bytes, is reused when a decode for this cache
        would give the same image (the same JPEG draft scale, or no draft at all)."""
        target = self.entry(os.path.abspath(path), size, mtime_ns)
        if target.is_file():
            return
        try:
            img = decoded if decoded is not None and self._same_decode(data, decoded) else \
                load_reduced(data, self.side, self.max_pixels)[0]
        except CorruptImage:  # ingestion decoded it just now; should it fail here, a first read reports it
            return
        self._store(target, img)

    def _store(self, target: Path, img: Image.Image) -> bytes | None:
        """Write `img` at the stored size as entry `target`; its bytes, or None for an image already
        that small (small originals are read as they are)."""
        if min(img.size) <= self.side:
            return None
        data = encode(shrink(img, self.side))
        self._write(target, data)
        self.filled += 1
        return data

    def _same_decode(self, data: bytes, decoded: Image.Image) -> bool:
        """Would `load_reduced(data, self.side)` decode at the scale `decoded` was? Pillow sets the
        draft size from the header alone, without decoding."""
        with Image.open(io.BytesIO(data)) as probe:
            if probe.format != "JPEG":
                return True  # decoded in full either way
            probe.draft(None, (self.side, self.side))
            return sorted(probe.size) == sorted(decoded.size)  # EXIF rotation may have swapped the sides

    def _write(self, target: Path, data: bytes) -> None:
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, target)  # atomic: a concurrent reader sees no entry or a whole one
        except OSError as exc:
            self.write_failures += 1
            if self.write_failures == 1:
                log.warning("⚠️  Image cache not writable at %s (%s): decoding originals instead",
                            self.directory, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()


def for_config(data_cfg, input_size: int, crop_pct: float) -> ImageCache | None:
    """The cache `data.image_cache` asks for, in the decode cache's folder; None when it is off."""
    side = stored_side(input_size, crop_pct, data_cfg.image_cache)
    if side is None:
        return None
    return ImageCache(str(cache_root(data_cfg).absolute() / FOLDER), side, data_cfg.max_image_pixels)


def cache_root(data_cfg) -> Path:
    """Where Sustain keeps its caches: `data.cache_dir`, else `<data.root>/.sustain_cache`."""
    return Path(data_cfg.cache_dir).expanduser() if data_cfg.cache_dir else Path(data_cfg.root).expanduser() / ".sustain_cache"


def disk_summary(cache: ImageCache) -> dict[str, int | str]:
    """What the data summary records: the folder, the stored side and its disk use (`disk_usage`)."""
    return {"directory": cache.directory, "side": cache.side, **disk_usage(cache.directory)}


def describe(cache: ImageCache, usage: dict[str, int | str] | None = None) -> str:
    usage = usage or disk_summary(cache)
    return (f"🗂️  Image cache: {usage['images']:,} images at {cache.side} px, {usage['bytes'] / 1e6:.1f} MB "
            f"({usage['bytes_per_image'] / 1e3:.0f} KB per image) in {cache.directory}")


def disk_usage(directory: str | Path) -> dict[str, int]:
    """Entries and bytes under a cache folder (temporary files included: they are disk use too)."""
    files = total = 0
    for root, _, names in os.walk(directory):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_size
                files += 1
            except OSError:  # removed meanwhile
                continue
    return {"images": files, "bytes": total, "bytes_per_image": total // files if files else 0}

"""Decode every image once (SPEC §4).

- `load_rgb`: the one way an image file becomes a PIL RGB image, here and at
  training time: pixel limit checked before decoding, EXIF orientation
  applied, palette/alpha/CMYK/greyscale/16-bit converted to 8-bit RGB.
- `decode_file`: `load_rgb` (a JPEG at a reduced scale, `SIGNATURE_DRAFT_SIDE`)
  plus a content hash of the bytes and the near-duplicate signature
  (`signature`); failures come back as a reason, never as a blank image.
- `decode_files`: the decode cache's misses (`decode_cache`), decoded in a process pool.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..utils import cpu_count
from .signature import signature
from .split import SIGNATURE

log = logging.getLogger("sustain.data.scan")

# full decode's, so the rows of a large lake are kept rather than decoded again (issue 10). Bump SIGNATURE_VERSION when only the signature variants change: the cache's
# rows are kept and only the variants are computed again.
DECODER_VERSION = "2"
SIGNATURE_VERSION = "4"
# Older signature versions whose stored parts are a prefix of the current signature (version 3 had
# no detail): their rows are kept and only the missing part is computed.
SIGNATURE_PREFIXES = frozenset({"3"})
VARIANTS_SIZE = SIGNATURE.itemsize - 8  # DecodeResult.variants: the signature after the pHash

# `decode_file` decodes a JPEG at a reduced DCT scale (libjpeg's 1/2 to 1/8) that keeps both sides at
# least this many pixels: twice the largest resize in `signature` (its 64 px grid; Pillow's reducing_gap
# of 2 reads at least that much). A 4032x3024 photo then decodes at 504x378 (1/8). On real photos from
# 640x480 to 4032x3024 every hash stayed within 2 bits of the full decode's, every colour mean within 5,
# and the near-duplicate groups were the same; at 64 px small photos drifted by 6 bits and 7 levels
# (measured in issue 13; git history of docs/performance.md). The size recorded is always the file's own.
SIGNATURE_DRAFT_SIDE = 128

# Below this many cache misses, or this many bytes of them, the pool's start-up (~0.2 s) costs more
# than it saves. Large files repay it sooner: 96 camera JPEGs (186 MB) decoded in 1.2 s on two
# workers against 2.1 s in-process (docs/performance.md).
POOL_MIN_FILES = 256
POOL_MIN_BYTES = 64 * 2**20


def use_pool(files: int, total_bytes: int, workers: int) -> bool:
    """Whether decoding `files` cache misses of `total_bytes` in all is worth a pool of `workers`."""
    return workers > 1 and (files >= POOL_MIN_FILES or total_bytes >= POOL_MIN_BYTES)

# Corrupt-file reasons start with one of these kinds (SPEC §4).
ZERO_BYTES = "zero bytes"
TRUNCATED = "truncated"
NOT_AN_IMAGE = "not an image"
OVER_PIXEL_LIMIT = "over the pixel limit"
UNREADABLE = "unreadable"
DECODE_ERROR = "decode error"


class CorruptImage(Exception):
    """A file that cannot become an image; `reason` starts with one of the kinds above."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DecodeResult(NamedTuple):
    """What one file decodes to. `reason` is None for a good image."""

    content_hash: str | None
    phash: int | None  # 64-bit perceptual hash, unsigned
    variants: bytes | None  # the rest of the near-duplicate signature (split.SIGNATURE)
    width: int
    height: int
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def signature(self) -> bytes:
        """The packed near-duplicate signature (split.SIGNATURE) of a good image."""
        return self.phash.to_bytes(8, "big") + self.variants


@contextlib.contextmanager
def _strict_pillow() -> Iterator[None]:
    # Our own pixel check runs on the header size before any decoding, so Pillow's
    # global bomb check is lifted (it could not report the size), and truncated
    # files must fail even if some other code set LOAD_TRUNCATED_IMAGES.
    # Global state: fine in the single-threaded processes that decode.
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = None, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Palette images with Transparency", EXIF warnings
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def load_rgb(source: str | Path | bytes, max_pixels: int | None = None) -> Image.Image:
    """Decode an image file (a path or its bytes) into an 8-bit RGB PIL image.

    Raises CorruptImage with a reason: zero bytes, truncated, not an image,
    over the pixel limit, unreadable or another decode error.
    """
    return load_rgb_sized(source, max_pixels)[0]


def load_rgb_sized(source: str | Path | bytes, max_pixels: int | None = None, draft_side: int | None = None
                   ) -> tuple[Image.Image, tuple[int, int]]:
    """`load_rgb`, plus the full-size (width, height) after EXIF orientation.

    With `draft_side`, a JPEG is decoded at a reduced DCT scale (1/2, 1/4, 1/8)
    that keeps both sides at or above it: the same checks, a fraction of the cost.
    """
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise CorruptImage(f"{UNREADABLE}: {exc.strerror or exc}") from None
    if not data:
        raise CorruptImage(ZERO_BYTES)
    with _strict_pillow():
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise CorruptImage(f"{NOT_AN_IMAGE}: no image format recognises its content") from None
        except Exception as exc:  # a header Pillow recognised but could not parse
            raise CorruptImage(_classify(exc)) from None
        width, height = img.size
        if limit is not None and width * height > limit:
            raise CorruptImage(over_limit_reason(width, height, limit))
        try:
            if draft_side and img.format == "JPEG":
                img.draft(None, (draft_side, draft_side))
            img.load()
            decoded = img.size
            rgb = to_rgb(ImageOps.exif_transpose(img))
        except Exception as exc:
            raise CorruptImage(_classify(exc)) from None
    # EXIF orientation by 90 degrees swaps the sides; read it off the result instead of parsing EXIF twice.
    return rgb, ((height, width) if rgb.size != decoded else (width, height))


def over_limit_reason(width: int, height: int, limit: int) -> str:
    return f"{OVER_PIXEL_LIMIT}: {width}x{height} = {width * height:,} pixels > {limit:,} (data.max_image_pixels)"


def _classify(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, EOFError) or "truncated" in text.lower() or "premature end" in text.lower():
        return f"{TRUNCATED}: {text}"
    return f"{DECODE_ERROR}: {text}"


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB: alpha is composited on white, 16-bit and float greyscale are rescaled, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode != "F" or arr.max(initial=0) > 1.0:
            arr = arr / 257.0  # 16-bit range onto 8 bits (Pillow's own convert would clip at 255)
        else:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


# `fill(path, data, size, mtime_ns, image)`: what else to make of a file while its bytes and their
# decode (at SIGNATURE_DRAFT_SIDE) are in memory: the training-resolution image cache. Size and
# mtime are those of the file the bytes came from.
Fill = Callable[[str, bytes, int, int, Image.Image], None]


def decode_file(path: str, max_pixels: int, known: DecodeResult | None = None, fill: Fill | None = None
                ) -> DecodeResult:
    """Decode one file; a failure is a result with a reason, never an exception.

    `known`: a cached result written by an older version, without the signature's variants or
    with only their first part (SIGNATURE_PREFIXES); its content hash, pHash and the stored part
    are kept as they are and only the missing part is computed. `fill` is called with the bytes
    of a file that decoded and their decode, so the file is read (and mostly decoded) once."""
    try:
        with open(path, "rb") as fh:  # not Path.read_bytes: its path parsing cost a tenth of a small decode
            data = fh.read()
            stat = os.fstat(fh.fileno())  # the file these bytes came from, for `fill`'s key
    except OSError as exc:
        return DecodeResult(None, None, None, 0, 0, f"{UNREADABLE}: {exc.strerror or exc}")
    if known is not None and known.phash is not None:
        content_hash = known.content_hash
    else:
        content_hash = hashlib.sha256(data).hexdigest() if data else None
    try:
        img, (width, height) = load_rgb_sized(data, max_pixels, draft_side=SIGNATURE_DRAFT_SIDE)
    except CorruptImage as exc:
        width, height = _header_size(data) if exc.reason.startswith(OVER_PIXEL_LIMIT) else (0, 0)
        return DecodeResult(content_hash, None, None, width, height, exc.reason)
    phash, variants = signature(img)
    if fill is not None:
        fill(path, data, stat.st_size, stat.st_mtime_ns, img)
    if known is not None and known.phash is not None:
        phash = known.phash  # the same definition: kept as the old version computed it
        if known.variants:
            variants = known.variants + variants[len(known.variants):]
    return DecodeResult(content_hash, phash, variants, width, height)


def _header_size(data: bytes) -> tuple[int, int]:
    with _strict_pillow(), Image.open(io.BytesIO(data)) as img:
        return img.size


def _decode_batch(paths: list[str], max_pixels: int, known: dict[str, DecodeResult],
                  fill: Fill | None = None) -> list[DecodeResult]:
    return [decode_file(p, max_pixels, known.get(p), fill) for p in paths]


def decode_files(paths: Sequence[str], max_pixels: int, workers: int,
                 on_batch: Callable[[list[str], list[DecodeResult]], None],
                 known: dict[str, DecodeResult] | None = None, fill: Fill | None = None) -> None:
    """Decode `paths`, calling `on_batch(paths, results)` as batches finish (in any order).

    Uses a process pool of `workers` when there are enough files to repay its
    start-up; 'spawn' so it behaves the same on Linux, macOS and in notebooks
    (and never forks a process that holds torch's threads). As with any
    spawned process, a script that calls this must guard its entry point with
    `if __name__ == "__main__":`. `known`: cached results whose signature variants are
    missing or incomplete (an older cache); only the missing part is computed for them.
    `fill` (picklable: it runs in the workers) gets each decoded file's bytes (see `decode_file`).
    """
    pending = list(paths)
    known = known or {}
    few = workers > 1 and len(pending) < POOL_MIN_FILES  # only then do the sizes matter
    if use_pool(len(pending), _total_bytes(pending, POOL_MIN_BYTES) if few else 0, workers) and _spawn_can_start():
        size = max(16, min(256, len(pending) // (workers * 16)))
        batches = [pending[i:i + size] for i in range(0, len(pending), size)]
        done: set[int] = set()
        try:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = {pool.submit(_decode_batch, batch, max_pixels, {p: known[p] for p in batch if p in known},
                                       fill): i
                           for i, batch in enumerate(batches)}
                for future in as_completed(futures):
                    i = futures[future]
                    on_batch(batches[i], future.result())
                    done.add(i)
            return
        except BrokenProcessPool as exc:  # e.g. a worker killed for memory: finish here, slower but complete
            log.warning("⚠️  The decode worker pool failed (%s); decoding the remaining files in this process", exc)
            pending = [p for i, batch in enumerate(batches) if i not in done for p in batch]
    for start in range(0, len(pending), 64):
        batch = pending[start:start + 64]
        on_batch(batch, _decode_batch(batch, max_pixels, known, fill))


def _total_bytes(paths: Sequence[str], enough: int) -> int:
    """The files' sizes summed until `enough` (a missing file counts 0: decoding reports it)."""
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            total += os.stat(path).st_size
        if total >= enough:
            break
    return total


def _spawn_can_start() -> bool:
    # A spawned worker re-imports the main script by its path; code read from stdin has none.
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)


def default_workers() -> int:
    """Decode processes for `data.num_workers: auto`: every core, at most 8."""
    return max(1, min(cpu_count(), 8))

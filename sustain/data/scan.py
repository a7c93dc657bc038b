"""Walk a source, decode every image once, cache what was learned (SPEC §4).

- `walk_source`: a sorted, deterministic walk; `exclude` globs prune paths.
- `load_rgb`: the one way an image file becomes a PIL RGB image, here and at
  training time: pixel limit checked before decoding, EXIF orientation
  applied, palette/alpha/CMYK/greyscale/16-bit converted to 8-bit RGB.
- `decode_file`: `load_rgb` (a JPEG at a reduced scale, `SIGNATURE_DRAFT_SIDE`)
  plus a content hash of the bytes and the near-duplicate signature (a
  64-bit perceptual hash and its variants, see `split`); failures come back
  as a reason, never as a blank image.
- `DecodeCache`: results keyed by path, size and mtime in a small SQLite
  file, so a second ingest decodes nothing that did not change.
- `decode_files`: the cache misses, decoded in a process pool.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import multiprocessing
import os
import re
import sqlite3
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from stat import S_ISREG
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..utils import cpu_count
from .labels import LabelMap, Resolution, resolve_label
from .split import CROPS, DETAIL_INDEX, SIGNATURE

log = logging.getLogger("sustain.data.scan")

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico",
})

# Operating-system litter, never data: macOS resource forks and Windows thumbnail caches. (Hidden
# entries, including macOS's `._x.jpg` AppleDouble files and `.DS_Store`, are skipped by their dot.)
SKIPPED_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})

# Bump when decode_file's output for the same bytes would change (content hash, pHash, conversion):
# the cache is dropped. Draft decoding (below) did not bump it: its hashes stay within 2 bits of the
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
# (docs/performance.md, "Draft decoding"). The size recorded is always the file's own.
SIGNATURE_DRAFT_SIDE = 128

# Below this many cache misses the pool's start-up costs more than it saves.
POOL_MIN_FILES = 256

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


# --------------------------------------------------------------------------- walking


class FileEntry(NamedTuple):
    path: str  # absolute
    rel: str  # relative to the source root, '/'-separated
    size: int
    mtime_ns: int

    @property
    def folders(self) -> tuple[str, ...]:
        return tuple(self.rel.split("/")[:-1])


@dataclass
class WalkResult:
    files: list[FileEntry] = field(default_factory=list)  # image candidates, sorted by rel
    excluded: int = 0  # files under an `exclude` glob
    ignored: list[str] = field(default_factory=list)  # other files (not an image extension), rel paths
    unreadable: list[str] = field(default_factory=list)  # folders that could not be listed, rel paths


def compile_globs(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """One regex for path globs: `*` and `?` stay inside a folder, `**` spans folders."""
    if not patterns:
        return None
    parts = []
    for pattern in patterns:
        out, i = [], 0
        pattern = pattern.strip("/")
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
            elif pattern.startswith("**", i):
                out.append(".*")
                i += 2
            elif pattern[i] == "*":
                out.append("[^/]*")
                i += 1
            elif pattern[i] == "?":
                out.append("[^/]")
                i += 1
            else:
                out.append(re.escape(pattern[i]))
                i += 1
        parts.append("".join(out))
    return re.compile("|".join(f"(?:{p})" for p in parts))


def walk_source(root: str | Path, exclude: Sequence[str] = (), skip: Sequence[str | Path] = ()) -> WalkResult:
    """All files under `root`, sorted by relative path whatever order the filesystem lists them in.

    Hidden entries (a leading '.': `.DS_Store`, AppleDouble `._x.jpg`), `__MACOSX`, `Thumbs.db`
    and the folders in `skip` (e.g. the decode cache) are passed over; symlinked folders are
    followed once each.
    """
    root = os.path.abspath(root)
    excluded = compile_globs(exclude)
    skip_real = {os.path.realpath(p) for p in skip}
    result = WalkResult()
    seen_dirs: set[tuple[int, int]] = set()

    def visit(directory: str, rel: str) -> None:
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen_dirs:
                return
            seen_dirs.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if not rel:
                raise
            result.unreadable.append(f"{rel} ({exc.strerror or exc})")
            return
        prefix = f"{rel}/" if rel else ""
        files = result.files
        for entry in entries:  # the loop of a warm ingest: kept to the checks each file needs
            name = entry.name
            lower = name.lower()
            if name[0] == "." or lower in SKIPPED_NAMES:
                continue
            child_rel = prefix + name
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if excluded and (excluded.fullmatch(child_rel) or excluded.fullmatch(child_rel + "/")):
                    result.excluded += _count_files(entry.path)
                elif os.path.realpath(entry.path) not in skip_real:
                    visit(entry.path, child_rel)
                continue
            if excluded and excluded.fullmatch(child_rel):
                result.excluded += 1
                continue
            dot = lower.rfind(".")
            if dot <= 0 or lower[dot:] not in IMAGE_EXTENSIONS:
                result.ignored.append(child_rel)
                continue
            try:
                st = entry.stat()
            except OSError:  # a dangling link: let decoding report it
                files.append(FileEntry(entry.path, child_rel, -1, -1))
                continue
            if S_ISREG(st.st_mode):
                files.append(FileEntry(entry.path, child_rel, st.st_size, st.st_mtime_ns))

    visit(root, "")
    result.files.sort(key=itemgetter(1))  # by rel
    return result


def _count_files(directory: str) -> int:
    return sum(len(files) for _, _, files in os.walk(directory))


# --------------------------------------------------------------------------- decoding


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


_DCT = None


def _dct_matrix() -> np.ndarray:
    global _DCT
    if _DCT is None:
        n = np.arange(32)
        dct = np.sqrt(2.0 / 32) * np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / 64)
        dct[0] /= np.sqrt(2.0)
        _DCT = dct
    return _DCT


def _low_frequencies(greys: np.ndarray) -> np.ndarray:
    """The 8x8 lowest DCT frequencies of a stack of 32x32 grey arrays, 64 per array."""
    dct = _dct_matrix()
    return (dct @ greys @ dct.T)[:, :8, :8].reshape(len(greys), 64)


def _phash_bits(low: np.ndarray) -> np.ndarray:
    """pHashes, as 8 bytes each, of rows of 64 low frequencies: each thresholded at its median."""
    # The median of 64 values, as np.median computes it (the mean of the middle two), without its
    # Python overhead: a fifth of a small image's signature.
    middle = np.sort(low, axis=1)[:, 31:33]
    return np.packbits(low > (middle[:, :1] + middle[:, 1:]) / 2, axis=1)


def _detail(low: np.ndarray) -> np.ndarray:
    """The verifier's detail of each row of 64 low frequencies: the 35 lowest after the mean
    (split.DETAIL_INDEX), centred and scaled to -127..127 (int8)."""
    ac = low[:, DETAIL_INDEX]
    ac = ac - np.add.reduce(ac, axis=1, keepdims=True) / ac.shape[1]  # ac.mean(axis=1), without its overhead
    peak = np.abs(ac).max(axis=1, keepdims=True)
    return np.rint(np.divide(ac * 127, peak, out=np.zeros_like(ac), where=peak > 0)).astype(np.int8)


def _grey32(grey: Image.Image, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    return _pixels(grey.resize((32, 32), Image.Resampling.LANCZOS, box=box, reducing_gap=2.0))


def _pixels(img: Image.Image) -> np.ndarray:
    """An 8-bit 'L' or 'RGB' image as float64 (height, width[, 3]): np.asarray(img) without the
    array-interface detour, which cost a sixth of a small image's signature."""
    shape = (img.height, img.width) if img.mode == "L" else (img.height, img.width, 3)
    return np.frombuffer(img.tobytes(), dtype=np.uint8).reshape(shape).astype(np.float64)


def perceptual_hash(img: Image.Image) -> int:
    """64-bit pHash: the 8x8 lowest frequencies of a 32x32 greyscale DCT, thresholded at their median."""
    return int.from_bytes(_phash_bits(_low_frequencies(_grey32(img.convert("L"))[None])).tobytes(), "big")


_REGIONS = None
_CROP_DCT = None
_GRID = 64  # crops are cut from the grey image resized to this square once


def _region_weights() -> np.ndarray:
    """(4, 256) averaging weights over a 16x16 thumbnail: whole, centre, top half, bottom half."""
    global _REGIONS
    if _REGIONS is None:
        masks = np.zeros((4, 16, 16))
        masks[0], masks[1, 4:12, 4:12], masks[2, :8], masks[3, 8:] = 1, 1, 1, 1
        _REGIONS = (masks / masks.sum(axis=(1, 2), keepdims=True)).reshape(4, 256)
    return _REGIONS


def _box_matrix(fraction: float) -> np.ndarray:
    """(32, _GRID) weights that average the centred `fraction` of a line of _GRID pixels into 32."""
    lo = _GRID * (1 - fraction) / 2
    edges = lo + np.arange(33) * (_GRID * fraction / 32)
    pixels = np.arange(_GRID)
    overlap = np.clip(np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _crop_dct() -> tuple[np.ndarray, np.ndarray]:
    """Per crop, the rows and the columns of (8 lowest DCT frequencies x crop-and-resize to 32):
    a crop's low frequencies are then rows @ grey64 @ columns.T, one product for all crops."""
    global _CROP_DCT
    if _CROP_DCT is None:
        low = _dct_matrix()[:8]
        _CROP_DCT = (np.stack([low @ _box_matrix(fy) for _, fy in CROPS]),
                     np.stack([low @ _box_matrix(fx) for fx, _ in CROPS]))
    return _CROP_DCT


def signature(img: Image.Image) -> tuple[int, bytes]:
    """(pHash, the rest of the near-duplicate signature (split.SIGNATURE)): the pHashes of the
    mirror and of the centred crops, the mean colours of the whole image, its centre, top and
    bottom halves, then the detail of each of the 7 hashes (from the same DCT: no extra cost).
    The crops are matrix products on one 64x64 grey image (3 resizes per image, not 8:
    decoding stays the cost of a cold ingest)."""
    grey = img.convert("L")
    full = _grey32(grey)
    flipped = _low_frequencies(np.stack([full, full[:, ::-1]]))
    grid = _pixels(grey.resize((_GRID, _GRID), Image.Resampling.LANCZOS, reducing_gap=2.0))
    rows, cols = _crop_dct()
    left = (rows.reshape(-1, _GRID) @ grid).reshape(len(CROPS), 8, _GRID)  # one BLAS product for every crop
    low = np.concatenate([flipped, np.einsum("cig,cjg->cij", left, cols).reshape(len(CROPS), 64)])
    hashes = _phash_bits(low)
    small = _pixels(img.resize((16, 16), Image.Resampling.BOX, reducing_gap=2.0))
    means = _region_weights() @ small.reshape(256, 3)
    return (int.from_bytes(hashes[0].tobytes(), "big"),
            hashes[1:].tobytes() + np.rint(means).astype(np.uint8).tobytes() + _detail(low).tobytes())


def decode_file(path: str, max_pixels: int, known: DecodeResult | None = None) -> DecodeResult:
    """Decode one file; a failure is a result with a reason, never an exception.

    `known`: a cached result written by an older version, without the signature's variants or
    with only their first part (SIGNATURE_PREFIXES); its content hash, pHash and the stored part
    are kept as they are and only the missing part is computed."""
    try:
        with open(path, "rb") as fh:  # not Path.read_bytes: its path parsing cost a tenth of a small decode
            data = fh.read()
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
    if known is not None and known.phash is not None:
        phash = known.phash  # the same definition: kept as the old version computed it
        if known.variants:
            variants = known.variants + variants[len(known.variants):]
    return DecodeResult(content_hash, phash, variants, width, height)


def _header_size(data: bytes) -> tuple[int, int]:
    with _strict_pillow(), Image.open(io.BytesIO(data)) as img:
        return img.size


def _decode_batch(paths: list[str], max_pixels: int, known: dict[str, DecodeResult]) -> list[DecodeResult]:
    return [decode_file(p, max_pixels, known.get(p)) for p in paths]


def decode_files(paths: Sequence[str], max_pixels: int, workers: int,
                 on_batch: Callable[[list[str], list[DecodeResult]], None],
                 known: dict[str, DecodeResult] | None = None) -> None:
    """Decode `paths`, calling `on_batch(paths, results)` as batches finish (in any order).

    Uses a process pool of `workers` when there are enough files to repay its
    start-up; 'spawn' so it behaves the same on Linux, macOS and in notebooks
    (and never forks a process that holds torch's threads). As with any
    spawned process, a script that calls this must guard its entry point with
    `if __name__ == "__main__":`. `known`: cached results whose signature variants are
    missing or incomplete (an older cache); only the missing part is computed for them.
    """
    pending = list(paths)
    known = known or {}
    if workers > 1 and len(pending) >= POOL_MIN_FILES and _spawn_can_start():
        size = max(16, min(256, len(pending) // (workers * 16)))
        batches = [pending[i:i + size] for i in range(0, len(pending), size)]
        done: set[int] = set()
        try:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = {pool.submit(_decode_batch, batch, max_pixels, {p: known[p] for p in batch if p in known}): i
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
        on_batch(batch, _decode_batch(batch, max_pixels, known))


def _spawn_can_start() -> bool:
    # A spawned worker re-imports the main script by its path; code read from stdin has none.
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)


def default_workers() -> int:
    """Decode processes for `data.num_workers: auto`: every core, at most 8."""
    return max(1, min(cpu_count(), 8))


# --------------------------------------------------------------------------- cache


class DecodeCache:
    """Decode results keyed by absolute path, size and mtime, in one SQLite file.

    SQLite because it is in the standard library, stores plain values (nothing
    is unpickled from a shared data folder) and commits atomically. If the
    folder cannot be written the cache lives in memory for this run only.
    """

    FILENAME = "decode_cache.sqlite"

    def __init__(self, directory: str | Path | None) -> None:
        self.location: str = ":memory:"
        self.db = None
        if directory is not None:
            try:
                Path(directory).mkdir(parents=True, exist_ok=True)
                self.location = str(Path(directory) / self.FILENAME)
                self.db = self._open(self.location)
            except (OSError, sqlite3.Error) as exc:
                log.warning("⚠️  Decode cache unavailable at %s (%s): decoding without a persistent cache",
                            directory, exc)
                self.location = ":memory:"
        if self.db is None:
            self.db = self._open(":memory:")

    @staticmethod
    def _open(location: str) -> sqlite3.Connection:
        db = sqlite3.connect(location, timeout=60)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        with db:
            if meta.get("decoder_version") != DECODER_VERSION:
                db.execute("DROP TABLE IF EXISTS files")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('decoder_version', ?)", (DECODER_VERSION,))
            db.execute(
                "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                "content_hash TEXT, phash INTEGER, width INTEGER, height INTEGER, reason TEXT, variants BLOB) "
                "WITHOUT ROWID")
            # A cache from before the signature variants: keep its rows, the variants are computed on use.
            if "variants" not in {row[1] for row in db.execute("PRAGMA table_info(files)")}:
                db.execute("ALTER TABLE files ADD COLUMN variants BLOB")
            version = meta.get("signature_version")
            if version != SIGNATURE_VERSION:
                # A row whose variants are shorter than VARIANTS_SIZE is completed on use (lake).
                if version not in SIGNATURE_PREFIXES:
                    db.execute("UPDATE files SET variants = NULL")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('signature_version', ?)", (SIGNATURE_VERSION,))
            db.execute("CREATE TABLE IF NOT EXISTS groups (key TEXT PRIMARY KEY, labels BLOB)")
        return db

    def load(self, prefixes: Sequence[str]) -> dict[str, CachedRow]:
        """Every cached entry under one of the path prefixes, as stored: path -> CachedRow
        (`cached_result` checks one against its file). Rows stay tuples: a warm ingest reads
        100,000 of them and turns only the few that need it into DecodeResults."""
        out: dict[str, CachedRow] = {}
        for prefix in prefixes:
            rows = self.db.execute(
                "SELECT path, size, mtime_ns, content_hash, phash, variants, width, height, reason FROM files "
                "WHERE path >= ? AND path < ?", (prefix, prefix + "\U0010ffff")).fetchall()
            out.update((row[0], row[1:]) for row in rows)
        return out

    def store(self, entries: Sequence[tuple[FileEntry, DecodeResult]]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO files (path, size, mtime_ns, content_hash, phash, width, height, reason, "
                "variants) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(f.path, f.size, f.mtime_ns, r.content_hash, signed_phash(r.phash), r.width, r.height, r.reason,
                  r.variants) for f, r in entries])

    def load_groups(self, key: str) -> np.ndarray | None:
        """Near-duplicate groups stored for exactly these signatures and settings, or None."""
        row = self.db.execute("SELECT labels FROM groups WHERE key = ?", (key,)).fetchone()
        return None if row is None else np.frombuffer(row[0], dtype=np.int64)

    def store_groups(self, key: str, labels: np.ndarray) -> None:
        with self.db:  # only the latest lake's groups are worth keeping
            self.db.execute("DELETE FROM groups")
            self.db.execute("INSERT INTO groups VALUES (?, ?)", (key, labels.astype(np.int64).tobytes()))

    def forget(self, paths: Sequence[str]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in paths])

    def close(self) -> None:
        self.db.close()


def signed_phash(value: int | None) -> int | None:
    return None if value is None else (value - (1 << 64) if value >= 1 << 63 else value)


# A decode cache row as stored: (size, mtime_ns, content_hash, phash (signed 64-bit), variants, width, height, reason).
CachedRow = tuple[int, int, "str | None", "int | None", "bytes | None", int, int, "str | None"]
_MASK64 = (1 << 64) - 1


def cached_result(entry: FileEntry, cached: CachedRow | None, max_pixels: int) -> DecodeResult | None:
    """The cached result for a file if it is still valid for this file and this pixel limit, else None."""
    if cached is None or entry.size < 0:
        return None
    size, mtime_ns, content_hash, phash, variants, width, height, reason = cached
    if size != entry.size or mtime_ns != entry.mtime_ns:
        return None
    result = DecodeResult(content_hash, None if phash is None else phash & _MASK64, variants, width, height, reason)
    over_before = result.reason is not None and result.reason.startswith(OVER_PIXEL_LIMIT)
    if result.width * result.height > max_pixels and (result.ok or over_before):
        return result._replace(reason=over_limit_reason(result.width, result.height, max_pixels))
    if over_before:
        return None  # the limit was raised since: decode it now
    return result


def cached_signature(entry: FileEntry, cached: CachedRow | None, max_pixels: int) -> tuple[str, int, bytes] | None:
    """(content hash, signed pHash, variants) when the row is a good image still valid for this file
    and pixel limit, with a current signature: the common case of a warm ingest, without building a
    DecodeResult. None means: ask `cached_result`."""
    if (cached is None or cached[0] != entry.size or cached[1] != entry.mtime_ns or cached[7] is not None
            or cached[4] is None or len(cached[4]) != VARIANTS_SIZE or cached[5] * cached[6] > max_pixels
            or entry.size < 0):
        return None
    return cached[2], cached[3], cached[4]


@dataclass
class LabelledWalk:
    """A walked source with every file's label resolved: what ingestion, `count_images`,
    `sustain evaluate --data` and `sustain predict DIR` all see."""

    walk: WalkResult
    labelled: list[tuple[FileEntry, tuple[int, ...]]] = field(default_factory=list)
    unmapped: dict[str, list[str]] = field(default_factory=dict)  # folder (as shown) -> absolute paths
    dropped: Counter = field(default_factory=Counter)  # label_map key -> files
    used_keys: set[str] = field(default_factory=set)


def walk_labelled(root: str | Path, label_map: LabelMap, exclude: Sequence[str] = (),
                  skip: Sequence[str | Path] = ()) -> LabelledWalk:
    """The one walk-and-label pass: `walk_source`, then `resolve_label` once per folder."""
    result = LabelledWalk(walk_source(root, exclude, skip))
    by_folder: dict[str, tuple[Resolution, tuple[str, ...]]] = {}
    labelled = result.labelled
    for entry in result.walk.files:
        folder = entry.rel.rpartition("/")[0]
        known = by_folder.get(folder)
        if known is None:
            folders = tuple(folder.split("/")) if folder else ()
            known = by_folder[folder] = (resolve_label(folders, label_map), folders)
            if known[0].kind in ("label", "drop"):  # a folder's key is used once it holds a file
                result.used_keys.add(known[0].key)
        res, folders = known
        if res.kind == "label":
            labelled.append((entry, res.targets))
        elif res.kind == "drop":
            result.dropped[res.key] += 1
        else:
            shown = "/".join(folders[: res.folder + 1]) if res.folder is not None else (folder or ".")
            result.unmapped.setdefault(shown, []).append(entry.path)
    return result


@dataclass(frozen=True)
class SourceCount:
    """What ingestion will find under a source root (walked and labelled, not yet decoded)."""

    images: int
    labelled: int
    dropped: int  # a `null` label_map target
    unmapped: int
    excluded: int  # under an `exclude` glob
    unmapped_folders: tuple[tuple[str, int], ...] = ()  # every unmapped folder, largest first

    def describe(self) -> str:
        text = f"{self.images:,} images ({self.labelled:,} labelled, {self.dropped:,} dropped, {self.unmapped:,} unmapped"
        return text + (f", {self.excluded:,} excluded)" if self.excluded else ")")


def count_images(root: Path, label_map: LabelMap, exclude: list[str]) -> SourceCount:
    """Walk a source root and resolve every file's label, exactly as ingestion does (no decoding).

    `sustain data download` and `sustain doctor` both report with it."""
    walked = walk_labelled(root, label_map, exclude)
    unmapped = sorted(((folder, len(paths)) for folder, paths in walked.unmapped.items()), key=lambda f: -f[1])
    return SourceCount(images=len(walked.walk.files), labelled=len(walked.labelled),
                       dropped=sum(walked.dropped.values()), unmapped=sum(n for _, n in unmapped),
                       excluded=walked.walk.excluded, unmapped_folders=tuple(unmapped))

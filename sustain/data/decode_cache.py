"""The decode cache: what `scan.decode_file` learned about each file, keyed by path, size and
mtime in one SQLite file, so a second ingest decodes nothing that did not change (SPEC §4).

It also keeps the near-duplicate groups of the latest lake (`lake._near_duplicate_groups`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .scan import (
    DECODER_VERSION,
    OVER_PIXEL_LIMIT,
    SIGNATURE_PREFIXES,
    SIGNATURE_VERSION,
    VARIANTS_SIZE,
    DecodeResult,
    over_limit_reason,
)
from .walk import FileEntry

log = logging.getLogger("sustain.data.decode_cache")


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

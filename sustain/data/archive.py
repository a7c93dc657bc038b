"""Unpacking a downloaded zip safely: no absolute or `..` member paths, no links, nothing executed.

Every member path is checked before anything is written, the free disk space
before the first byte, and CRCs as members are read; a corrupt, truncated or
unsafe archive raises ArchiveError naming it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from ..errors import RunFailed

log = logging.getLogger("sustain.data.archive")

SKIPPED_MEMBER_DIRS = frozenset({"__MACOSX"})  # macOS resource forks: metadata, not images


class ArchiveError(RunFailed):
    """An archive that cannot be unpacked: corrupt, truncated or unsafe."""


def safe_member_path(name: str) -> PurePosixPath:
    """The relative path an archive member may be written to; ArchiveError for an unsafe one."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ArchiveError(f"absolute path {name!r}")
    parts = [p for p in re.split(r"[\\/]+", name) if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"path escaping the target folder {name!r}")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")



def unpack_archive(archive: Path, target: Path, *, desc: str | None = None) -> int:
    """Extract a zip into `target` (created fresh), safely. Returns the number of files written.

    Every member path is checked before anything is written; links are skipped; CRCs are
    verified as members are read. Corruption raises ArchiveError naming the archive.
    """
    if target.exists():
        shutil.rmtree(target)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = []
            for info in zf.infolist():
                try:
                    rel = safe_member_path(info.filename)
                except ArchiveError as exc:
                    raise ArchiveError(f"Refusing to unpack {archive}: it holds an unsafe member, {exc}",
                                       "the archive is not trustworthy: delete it and re-run") from None
                if rel.parts and rel.parts[0] in SKIPPED_MEMBER_DIRS:
                    continue
                if stat.S_ISLNK(info.external_attr >> 16):
                    log.warning("Skipping link %s in %s", info.filename, archive.name)
                    continue
                members.append((info, rel))
            _check_free_space(target.parent, sum(i.file_size for i, _ in members), archive)
            target.mkdir(parents=True)
            written = 0
            with tqdm(total=sum(i.file_size for i, _ in members), unit="B", unit_scale=True,
                      desc=desc or f"Unpacking {archive.name}", leave=False) as bar:
                for info, rel in members:
                    out = target / rel
                    try:
                        if info.is_dir() or not rel.parts:
                            out.mkdir(parents=True, exist_ok=True)
                            continue
                        out.parent.mkdir(parents=True, exist_ok=True)
                        with zf.open(info) as src, open(out, "wb") as dst:
                            shutil.copyfileobj(src, dst, 1 << 20)
                    except OSError as exc:
                        raise RunFailed(f"Could not write {out} while unpacking {archive}: {exc}",
                                        "check free disk space and permissions, then re-run") from None
                    written += 1
                    bar.update(info.file_size)
            return written
    # RuntimeError: an encrypted member; NotImplementedError: an unsupported compression method.
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise ArchiveError(f"Corrupt or unreadable archive {archive}: {exc}",
                           f"delete it (rm {_quote(archive)}) and re-run the download") from None


def _check_free_space(folder: Path, needed: int, archive: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise RunFailed(f"Not enough disk space to unpack {archive.name}: needs {needed / 1e9:.1f} GB, "
                        f"{free / 1e9:.1f} GB free in {folder}", "free some space and re-run")


def _quote(path: Path) -> str:
    text = str(path)
    return f"'{text}'" if re.search(r"\s", text) else text


def sha256_file(path: Path) -> str:
    """The file's SHA-256, hex (recorded in the completion marker)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

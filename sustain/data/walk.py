"""Walk a source: every image file under a root, sorted, with its label (SPEC §4).

- `walk_source`: a sorted, deterministic walk; `exclude` globs prune paths; hidden
  entries and operating-system litter are passed over.
- `walk_labelled`: the walk with every file's label resolved once per folder: what
  ingestion, `count_images`, `sustain evaluate --data` and `sustain predict DIR` see.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from stat import S_ISREG
from typing import NamedTuple

from .labels import LabelMap, Resolution, resolve_label

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico",
})

# Operating-system litter, never data: macOS resource forks and Windows thumbnail caches. (Hidden
# entries, including macOS's `._x.jpg` AppleDouble files and `.DS_Store`, are skipped by their dot.)
SKIPPED_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})

# Bump when decode_file's output for the same bytes would change (content hash, pHash, conversion):


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
    # ~60 lines with the nested `visit`, which shares the result, the globs and the folders seen.
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

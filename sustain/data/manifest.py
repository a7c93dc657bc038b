"""manifest.csv: one row per image of the lake, written and read by the same code (SPEC §4).

`ManifestRow` is what the loaders, evaluation and export see of an image; `manifest_hash`
identifies a lake whatever folder it sits in; `manifest_text` and `read_manifest` are the
file's writer and reader.
"""

from __future__ import annotations

import csv
import hashlib
import io
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..taxonomy import Taxonomy

MANIFEST_COLUMNS = ("path", "relpath", "source", "label", "split", "content_hash", "group", "duplicates")


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One image of the lake. `targets` are class indices: one for a fine label, several for a set."""

    path: str  # absolute
    source: str
    label: str  # class name, set name, or 'a|b|c'
    targets: tuple[int, ...]
    split: str  # 'train' | 'val' | 'test'
    content_hash: str
    group: int  # duplicate group: exact and near duplicates share one
    relpath: str = ""  # relative to the source root, '/'-separated
    duplicates: int = 0  # other byte-identical copies merged into this row


def manifest_hash(rows: Sequence[ManifestRow]) -> str:
    """sha256 over (source/relative path, content hash, label, split) of every row, in sorted order.

    Absolute paths are left out, so the same lake moved to another folder or
    machine has the same hash; relative paths are NFC-normalised because
    macOS stores file names decomposed.
    """
    lines = sorted(
        f"{r.source}/{unicodedata.normalize('NFC', r.relpath)}\t{r.content_hash}\t{r.label}\t{r.split}\n"
        for r in rows)
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8"))
    return digest.hexdigest()


def manifest_text(rows: Sequence[ManifestRow]) -> str:
    """manifest.csv's content, exactly as csv.writer writes it."""
    lines = [",".join(MANIFEST_COLUMNS) + "\n"]
    lines += [f"{r.path},{r.relpath},{r.source},{r.label},{r.split},{r.content_hash},{r.group},{r.duplicates}\n"
              for r in rows]
    text = "".join(lines)
    # csv.writer quotes a field only for a comma, a quote or a line break in it. Without any, joining
    # is what it writes, 5x faster (a tenth of a warm ingest); a path with one goes through csv.
    if '"' not in text and "\r" not in text and text.count("\n") == len(lines) and \
            text.count(",") == (len(MANIFEST_COLUMNS) - 1) * len(lines):
        return text
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows((r.path, r.relpath, r.source, r.label, r.split, r.content_hash, r.group, r.duplicates)
                     for r in rows)
    return buffer.getvalue()


def read_manifest(path: str | Path, taxonomy: Taxonomy) -> list[ManifestRow]:
    """Rows of a manifest.csv written by `ingest`; labels are resolved against `taxonomy`."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"Manifest not found: {path}", "run `sustain data ingest --config <file>` first")
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise UsageError(f"{path} is not a manifest written by sustain: missing columns {sorted(missing)}")
        for line in reader:
            label = line["label"]
            try:
                targets = taxonomy.resolve(label.split("|") if "|" in label else label)
            except KeyError as exc:
                raise UsageError(f"{path}: label {label!r} is not in this taxonomy ({exc.args[0]})",
                                 "use the taxonomy the manifest was built with") from None
            rows.append(ManifestRow(path=line["path"], source=line["source"], label=label, targets=targets,
                                    split=line["split"], content_hash=line["content_hash"], group=int(line["group"]),
                                    relpath=line["relpath"], duplicates=int(line["duplicates"])))
    return rows

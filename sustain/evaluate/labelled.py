"""The rows `sustain evaluate` scores: one split of a run's manifest.csv, or a labelled
folder (``--data``) walked and labelled as ingestion does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..config import SourceConfig
from ..data import (
    IMAGE_EXTENSIONS,
    ManifestRow,
    compile_label_map,
    normalize_key,
    read_manifest,
    walk_labelled,
)
from ..errors import ConfigError, UsageError
from ..taxonomy import Taxonomy


def read_manifest_split(manifest: Path, split: str, taxonomy: Taxonomy) -> tuple[list[Any], list[str]]:
    """ManifestRows of one split of a run's manifest.csv (labels resolved with the
    checkpoint's taxonomy, as training did) and their source names."""
    if not manifest.is_file():
        raise UsageError(f"No manifest.csv next to the checkpoint: {manifest}",
                         "pass the checkpoint inside its run folder, or score a folder with --data DIR")
    rows = [r for r in read_manifest(manifest, taxonomy) if r.split == split]
    if not rows:
        raise UsageError(f"{manifest} has no '{split}' rows", "pick another --split")
    return rows, list(dict.fromkeys(r.source for r in rows))


def labelled_folder_rows(
    root: Path, taxonomy: Taxonomy, label_map: str | Path | None = None
) -> tuple[list[Any], list[str]]:
    """ManifestRows for ``root/<folder>/**/<image>``, walked and labelled as ingestion does
    (`data.walk.walk_labelled`); a folder is a class or set name, or is mapped by a YAML
    ``{folder: class | [classes] | SET | null}``."""
    if not root.is_dir():
        raise UsageError(f"--data folder not found: {root}", "pass a folder of <class>/<image> files")
    source = f"data_{root.resolve().name}"
    walked = walk_labelled(root, _folder_label_map(source, taxonomy, label_map))
    if walked.unmapped:
        folders = sorted(walked.unmapped)
        where = f" and are not in --label-map {label_map}" if label_map is not None else ""
        raise UsageError(f"Folders in {root} name no class or set of the checkpoint{where}: {folders}",
                         f"rename them to a class or set name, or {'add them to' if label_map else 'pass'} "
                         "--label-map map.yaml with {folder: class | [classes] | SET | null} (null skips a folder)")
    rows = [ManifestRow(path=entry.path, source=source, label=taxonomy.label_name(targets), targets=targets,
                        split="eval", content_hash="", group=i, relpath=entry.rel)
            for i, (entry, targets) in enumerate(walked.labelled)]
    if not rows:
        raise UsageError(f"No images found under {root}/<class>/", f"image extensions: {sorted(IMAGE_EXTENSIONS)}")
    return rows, [source]


def _read_label_map(label_map: str | Path) -> dict[str, Any]:
    try:
        mapping = yaml.safe_load(Path(label_map).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"Cannot read --label-map {label_map}: {exc}", "give a YAML {folder: class} mapping") from None
    if not isinstance(mapping, dict):
        raise UsageError(f"--label-map {label_map} must be a mapping {{folder: class}}")
    return {str(k): v for k, v in mapping.items()}


def folder_mapping(taxonomy: Taxonomy, given: dict[str, Any]) -> dict[str, Any]:
    """Every class and set name as itself, then the --label-map entries: a folder named after a class
    or set needs no entry, and an entry for such a folder wins (keys compare as ingestion's do)."""
    mapped = {normalize_key(k) for k in given}
    own = {name: name for name in (*taxonomy.classes, *taxonomy.sets) if normalize_key(name) not in mapped}
    return {**own, **given}


def _folder_label_map(source: str, taxonomy: Taxonomy, label_map: str | Path | None) -> Any:
    """The LabelMap for `--data`: class and set names as themselves, plus the --label-map YAML."""
    mapping = folder_mapping(taxonomy, {} if label_map is None else _read_label_map(label_map))
    try:
        return compile_label_map(SourceConfig(name=source, root=".", label_map=mapping), taxonomy)
    except ValidationError as exc:
        raise UsageError(f"--label-map {label_map}: {exc.errors()[0]['msg']}",
                         "each folder maps to a class, a set, a list of classes, or null") from None
    except ConfigError as exc:
        problem = exc.message.split(": ", 1)[-1]
        raise UsageError(f"--label-map {label_map} maps folders to names that are no class or set of the checkpoint: "
                         f"{problem}", exc.hint) from None

"""Label resolution: which class (or set of classes) a file's folders mean (SPEC §4).

Pure functions, no I/O. A source's `label_map` is compiled once against the
taxonomy (every target checked, every key normalised); then each folder
chain resolves deepest-first:

- folders named in `ignore_dirs` are skipped over;
- the deepest folder that the map knows wins: an exact key first, then the
  first glob key (in config order) that matches;
- keys compare case-insensitively, with `-`, `_` and spaces treated as equal;
- a `null` target drops the file; no match at all leaves it unmapped.

`ignore_dirs` only changes how labels are read, never which files are
walked: a skip-list can no longer hide a whole source, the folders it would
have hidden show up as unmapped instead.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ..config import SourceConfig
from ..errors import ConfigError
from ..taxonomy import Taxonomy

_SEPARATORS = re.compile(r"[-_ ]+")
_GLOB_CHARS = frozenset("*?[")


def normalize_key(name: str) -> str:
    """The form keys and folder names are compared in: lower case, `-`/`_`/space runs as one `_`."""
    return _SEPARATORS.sub("_", name.strip().lower())


@dataclass(frozen=True)
class LabelMap:
    """A source's label_map compiled against the taxonomy.

    Targets are sorted class-index tuples; `None` means "drop the file".
    `keys` maps each normalised key back to the key as written, for reports.
    """

    source: str
    identity: bool
    exact: Mapping[str, tuple[int, ...] | None]
    globs: tuple[tuple[str, tuple[int, ...] | None], ...]
    ignore: frozenset[str]
    keys: Mapping[str, str]


@dataclass(frozen=True)
class Resolution:
    """What a folder chain resolves to.

    kind: 'label' (targets set), 'drop' (a null target) or 'unmapped'.
    key: the label_map key that matched (as written), or None.
    folder: index into the folder chain of the folder that decided; for an
    unmapped file, the deepest folder that is not ignored (None if every
    folder is ignored or the file sits in the source root).
    """

    kind: Literal["label", "drop", "unmapped"]
    targets: tuple[int, ...] | None = None
    key: str | None = None
    folder: int | None = None


def compile_label_map(source: SourceConfig, taxonomy: Taxonomy) -> LabelMap:
    """Check a source's label_map against the taxonomy and compile it.

    Raises ConfigError naming `data.sources.<name>.label_map.<key>` for a
    target that is neither a class nor a set, an empty list, two keys that
    normalise to the same folder with different targets, or a key that
    `ignore_dirs` would always skip.
    """
    prefix = f"data.sources[{source.name}]"
    ignore = frozenset(normalize_key(d) for d in source.ignore_dirs)
    if source.label_map == "identity":
        exact: dict[str, tuple[int, ...] | None] = {}
        keys: dict[str, str] = {}
        for i, name in enumerate(taxonomy.classes):
            norm = normalize_key(name)
            if norm in exact:
                raise ConfigError(f"{prefix}.label_map", f"identity is ambiguous: classes {keys[norm]!r} and {name!r} "
                                  "compare equal as folder names", "rename one of the classes or give an explicit label_map")
            exact[norm] = (i,)
            keys[norm] = name
        _check_not_ignored(prefix, exact, keys, ignore, "class")
        return LabelMap(source.name, True, exact, (), ignore, keys)

    exact = {}
    keys = {}
    globs: list[tuple[str, tuple[int, ...] | None]] = []
    for key, target in source.label_map.items():
        resolved = resolve_target(target, taxonomy, f"{prefix}.label_map.{key}")
        norm = normalize_key(key)
        if _GLOB_CHARS & set(norm):
            globs.append((norm, resolved))
            keys[norm] = key
            continue
        if norm in exact and exact[norm] != resolved:
            raise ConfigError(f"{prefix}.label_map.{key}",
                              f"matches the same folders as key {keys[norm]!r} (keys ignore case, '-', '_' and spaces) "
                              "but maps them to a different label", "keep one of the two keys")
        exact[norm] = resolved
        keys[norm] = key
    _check_not_ignored(prefix, exact, keys, ignore, "label_map key")
    return LabelMap(source.name, False, exact, tuple(globs), ignore, keys)


def _check_not_ignored(prefix: str, exact: Mapping[str, object], keys: Mapping[str, str],
                       ignore: frozenset[str], what: str) -> None:
    clash = sorted(keys[k] for k in exact if k in ignore)
    if clash:
        raise ConfigError(f"{prefix}.ignore_dirs",
                          f"skips folders named {clash}, which the {what} {clash[0]!r} needs: those files could never get that label",
                          f"remove {clash[0]!r} from ignore_dirs")


def resolve_target(target: str | Sequence[str] | None, taxonomy: Taxonomy, key: str) -> tuple[int, ...] | None:
    """Class indices for one label_map value: a class, a set name, a list of either, or None (drop)."""
    if target is None:
        return None
    names = [target] if isinstance(target, str) else list(target)
    if not names:
        raise ConfigError(key, "is an empty list", "list at least one class or set, or use null to drop these files")
    for name in names:
        if name not in taxonomy.classes and name not in taxonomy.sets:
            known = list(taxonomy.classes) + list(taxonomy.sets)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use a class or one of the sets {sorted(taxonomy.sets)}"
            raise ConfigError(key, f"names {name!r}, which is neither a class nor a set of the taxonomy", hint)
    return taxonomy.resolve(names)


def resolve_label(folders: Sequence[str], label_map: LabelMap) -> Resolution:
    """Resolve the folders between a source root and a file, deepest first."""
    deepest_unignored: int | None = None
    for i in range(len(folders) - 1, -1, -1):
        norm = normalize_key(folders[i])
        if norm in label_map.ignore:
            continue
        if deepest_unignored is None:
            deepest_unignored = i
        if norm in label_map.exact:
            return _resolved(label_map.exact[norm], label_map.keys[norm], i)
        for pattern, target in label_map.globs:
            if fnmatch.fnmatchcase(norm, pattern):
                return _resolved(target, label_map.keys[pattern], i)
    return Resolution("unmapped", folder=deepest_unignored)


def _resolved(target: tuple[int, ...] | None, key: str, folder: int) -> Resolution:
    if target is None:
        return Resolution("drop", key=key, folder=folder)
    return Resolution("label", targets=target, key=key, folder=folder)

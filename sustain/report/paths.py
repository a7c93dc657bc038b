"""How a report names files: relative to the data root or the run folder, never the machine's layout.

The absolute roots come from run.json's `local_paths` (the only place a run
keeps them, to resume on the same machine); a run from before it falls back
to the absolute roots its config and data summary name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import RUN
from ..utils import portable_path

# An absolute POSIX path inside text: not after a word, a dot, `~` or a root's name (`<data root>/x`), and not
# a URL's host (`https://host/...`); an sqlite URI's path (`sqlite:////abs/mlflow.db`) is one.
_ABSOLUTE = re.compile(r"(?<![\w.:~>])(?<!:/)/(?:[^\s/\"'<>]+/)+[^\s/\"'<>,;)]+")


@dataclass(frozen=True)
class PathView:
    """The roots of one run: its folder, the data root and each source's root (absolute)."""

    run_dir: Path
    data_root: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, run_dir: str | Path, run: Mapping[str, Any] | None = None) -> PathView:
        run_dir = Path(run_dir).expanduser()
        if run is None:
            try:
                run = json.loads((run_dir / RUN).read_text(encoding="utf-8"))
            except (OSError, ValueError):  # no run.json yet: paths fall back to their last parts
                run = {}
        local = run.get("local_paths") or {}
        data_root = local.get("data_root") or (run.get("config") or {}).get("data", {}).get("root")
        sources = local.get("sources") or {name: s.get("root") for name, s in
                                           ((run.get("data_summary") or {}).get("sources") or {}).items()
                                           if isinstance(s, Mapping) and s.get("root")}
        absolute = data_root if data_root and Path(data_root).is_absolute() else None
        return cls(run_dir, absolute, {k: v for k, v in sources.items() if Path(v).is_absolute()})

    def _named_roots(self) -> list[tuple[str, str]]:
        """(absolute root, its name), longest first so a folder inside another matches first."""
        pairs = [(str(self.run_dir.resolve()), "<run folder>"), (str(self.run_dir.absolute()), "<run folder>")]
        if self.data_root:
            pairs += [(self.data_root, "<data root>"), (str(Path(self.data_root).resolve()), "<data root>")]
        return sorted(set(pairs), key=lambda p: -len(p[0]))

    def show(self, path: str | Path) -> str:
        """A file as a reader sees it: relative to the data root (an image) or the run folder."""
        return portable_path(path, [root for root, _ in self._named_roots()] + list(self.sources.values()))

    def in_source(self, path: str | Path, source: str) -> str:
        """A file relative to its source's root: what that source's `exclude` list takes."""
        root = self.sources.get(source)
        return portable_path(path, [root]) if root else self.show(path)

    def text(self, value: str) -> str:
        """Any text with each root replaced by its name (notes, raw JSON); any other absolute path
        (a cache or an MLflow store elsewhere) keeps only its last two parts."""
        for root, name in self._named_roots():
            value = value.replace(root, name)
        return _ABSOLUTE.sub(lambda m: portable_path(m.group(0), []), value)

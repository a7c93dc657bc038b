"""Small shared helpers with no project dependencies (layer 0)."""

from __future__ import annotations

import html
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def escape_html(value: Any) -> str:
    """Any value as text safe inside HTML, attributes included (report, gallery, compare)."""
    return html.escape(str(value), quote=True)


def wrap_html(value: Any) -> str:
    """Escaped text that may break after `_` and `/` (class names, file paths), never inside a word."""
    return escape_html(value).replace("_", "_<wbr>").replace("/", "/<wbr>")


def finite_float(value: Any) -> float | None:
    """A finite float, or None for a missing / non-numeric / NaN / Inf entry (JSON artifacts, plots)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN/Inf: a non-finite float becomes null, anything else is kept."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def fmt_metric(value: float | None) -> str:
    """A metric for the console: four decimals, or "n/a"."""
    return "n/a" if value is None else f"{value:.4f}"


def portable_path(path: str | Path, roots: Any) -> str:
    """`path` relative to the first of `roots` that holds it (the run folder, the data root), else
    `…/` and its last two parts: a file meant to be shared never names the machine's folders."""
    text = str(path)
    for root in roots:
        base = str(root).rstrip("/" + os.sep)
        if base and (text == base or text.startswith((base + "/", base + os.sep))):
            return text[len(base):].lstrip("/" + os.sep) or "."
    parts = Path(text).parts
    return "…/" + "/".join(parts[-2:]) if Path(text).is_absolute() else text


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write a file through `write(fileobj)` into a temp file, then rename it into place.

    A crash mid-write leaves the old file (or none), never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def setup_logging(verbose: bool = False) -> logging.Logger:
    """Send the "sustain" logger's messages, plain, to the current stdout.

    Idempotent. The handler is re-pointed at `sys.stdout` on every call, so
    notebooks and tests that swap stdout keep seeing the messages.
    """
    logger = logging.getLogger("sustain")
    handler = next((h for h in logger.handlers if getattr(h, "_sustain_stdout", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stdout)
        handler._sustain_stdout = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    else:
        handler.stream = sys.stdout  # not setStream(): it flushes the old, possibly closed, stream
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    return logger


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"train": {"lr": 1e-4}}` → `{"train.lr": "0.0001"}`; lists become their text."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]  # MLflow's param length limit
    return flat


def lazy_offers(package: str, offers: Mapping[str, str]) -> Callable[[str], Any]:
    """A package's `__getattr__` that imports what it offers on first use (PEP 562).

    `offers` maps each public name to the module inside `package` that defines it
    ("" for a module offered as itself). Rooms stay cheap to import: `sustain --help`
    does not load torch because `sustain.training` offers `train`.
    """
    import importlib

    def __getattr__(name: str) -> Any:
        if name not in offers:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{offers[name] or name}")
        return getattr(module, name) if offers[name] else module

    return __getattr__

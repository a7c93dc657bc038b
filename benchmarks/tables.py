"""The docs' figures, generated from the committed results: `python -m benchmarks tables [--check]`.

A table in docs/*.md or README.md is marked

    <!-- table:NAME -->
    ... generated: do not edit by hand ...
    <!-- /table:NAME -->

and TABLES below says which file under benchmarks/results/ it comes from and
which fields it shows. `tables` rewrites every marked table from its JSON;
`tables --check` changes nothing and exits 1, naming the file and the table,
when one differs from what its JSON gives (tests/test_benchmarks.py runs it).
Under each table a line names the result file, its command, commit, date,
machine and load average, so every figure leads to how it was measured.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, ROOT

DOCS = ("README.md", "docs/*.md")
MARKED = re.compile(r"(<!-- table:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.S)


@dataclass(frozen=True)
class Column:
    header: str
    key: str  # a dotted path into the row ("a.b", "rows.0.x")
    fmt: str = "{}"


@dataclass(frozen=True)
class Table:
    source: str  # a file under benchmarks/results/
    columns: tuple[Column, ...]
    rows: str | None = None  # dotted path of the list of rows; None: the document is the one row


def _c(header: str, key: str, fmt: str = "{}") -> Column:
    return Column(header, key, fmt)


TABLES: dict[str, Table] = {}


def lookup(doc: Any, key: str) -> Any:
    """`doc` followed along the dotted `key` (list items by index); KeyError naming the key when absent."""
    value = doc
    for part in key.split("."):
        if isinstance(value, list) and part.lstrip("-").isdigit():
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(key)
    return value


def cell(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "✓" if value else "✗"
    if isinstance(value, list):
        return ", ".join(cell(v, fmt) for v in value)
    return fmt.format(value)


def provenance_line(source: str, doc: dict[str, Any], up: str = "../") -> str:
    """Which file, command, commit, date, machine and load a table's figures come from."""
    p = doc.get("provenance") or {}
    machine = p.get("machine") or {}
    commit = (p.get("commit") or {}).get("sha", "?")[:10]
    before, after = machine.get("load_average_before") or ["?"], machine.get("load_average_after") or ["?"]
    return (f"From [`benchmarks/results/{source}`]({up}benchmarks/results/{source}): "
            f"`{p.get('command', '?')}` at `{commit}`, {str(p.get('date_utc', '?'))[:10]}, "
            f"{machine.get('cpu_model', '?')} ({machine.get('usable_cores', '?')} cores), "
            f"load average {before[0]} → {after[0]}.")


def render(name: str, table: Table, results_dir: Path = RESULTS_DIR, up: str = "../") -> str:
    """The Markdown of table `name` from its JSON (ends with its provenance line; `up` leads from the doc to the root)."""
    path = results_dir / table.source
    if not path.is_file():
        raise FileNotFoundError(f"table {name!r}: {path} does not exist; run the benchmark that writes it")
    doc = json.loads(path.read_text(encoding="utf-8"))
    rows = lookup(doc, table.rows) if table.rows else [doc]
    lines = ["| " + " | ".join(c.header for c in table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    for row in rows:
        try:
            lines.append("| " + " | ".join(cell(lookup(row, c.key), c.fmt) for c in table.columns) + " |")
        except KeyError as e:
            raise KeyError(f"table {name!r}: {path} has no field {e.args[0]!r}") from None
    return "\n".join(lines) + "\n\n" + provenance_line(table.source, doc, up) + "\n"


def doc_files(root: Path = ROOT) -> list[Path]:
    return sorted({p for pattern in DOCS for p in root.glob(pattern)})


def regenerate(text: str, where: str, tables: dict[str, Table], results_dir: Path) -> tuple[str, list[str]]:
    """`text` with its marked tables regenerated, and the names of those that changed."""
    changed: list[str] = []

    def replace(m: re.Match[str]) -> str:
        name = m["name"]
        if name not in tables:
            raise KeyError(f"{where}: table {name!r} is marked but not defined in benchmarks/tables.py")
        body = render(name, tables[name], results_dir, "../" * where.count("/"))
        if body != m["body"]:
            changed.append(name)
        return m[1] + body + m[4]

    return MARKED.sub(replace, text), changed


def main(argv: list[str], root: Path = ROOT, results_dir: Path = RESULTS_DIR) -> int:
    check = "--check" in argv
    stale = []
    for path in doc_files(root):
        text = path.read_text(encoding="utf-8")
        where = str(path.relative_to(root))
        try:
            new, changed = regenerate(text, where, TABLES, results_dir)
        except (KeyError, FileNotFoundError) as e:
            print(f"{where}: {e.args[0]}", file=sys.stderr)
            return 1
        for name in changed:
            stale.append(f"{where}: table {name!r} differs from benchmarks/results/{TABLES[name].source}")
        if changed and not check:
            path.write_text(new, encoding="utf-8")
    if check and stale:
        print("\n".join(stale) + "\nrun `python -m benchmarks tables` to regenerate them", file=sys.stderr)
        return 1
    print("\n".join(stale) if stale else "every marked table matches its results")
    return 0

"""The benchmarks' harness: one provenance block in every result, documented flags that work,
and the docs' figures generated from the committed results (`python -m benchmarks tables --check`)."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import HARNESS, tables
from benchmarks.common import ROOT

BENCH_DIR = ROOT / "benchmarks"
BENCHMARKS = sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem not in {*HARNESS, "__init__", "__main__"})
# Machine facts a result once wrote beside its figures; now only its provenance names them.
MACHINE_KEYS = {"machine", "machine_start", "command", "commit", "versions", "cpus", "cores", "processor", "platform",
                "gpu", "load_average", "load_average_end", "load_avg_before", "load_avg_after"}


def _documented_flags(doc: str) -> set[str]:
    """The --flags the usage lines of a module docstring show (lines that run a benchmark)."""
    lines = [line for line in doc.splitlines() if "benchmarks" in line and "--" in line and "torch" not in line]
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", "\n".join(lines)))


@pytest.mark.parametrize("name", [n for n in BENCHMARKS if n not in {"gpu_check"}])
def test_every_documented_flag_is_accepted(name: str) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    flags = _documented_flags(module.__doc__ or "")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    missing = {f for f in flags if f not in out.getvalue()}
    assert not missing, f"benchmarks/{name}.py documents {sorted(missing)} but its parser does not accept them"


def test_a_result_records_command_commit_machine_and_versions(tmp_path: Path) -> None:
    """bench_checkpoint on a tiny model, as a user runs it: its JSON says how, where and with what it ran."""
    out = tmp_path / "ckpt.json"
    cmd = [sys.executable, "-m", "benchmarks.bench_checkpoint", "--model", "test_vit", "--saves", "2",
           "--step-seconds", "0.5", "--interval-minutes", "1", "--json", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=120)
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["steps_between_saves"] == 120 and doc["save_in_steps"] == pytest.approx(
        doc["median_save_seconds"] / 0.5, abs=0.01)
    assert not set(doc) & MACHINE_KEYS, "machine facts belong in the provenance block only"
    p = doc["provenance"]
    assert p["command"].startswith("python -m benchmarks.bench_checkpoint --model test_vit")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert p["commit"]["sha"] == head.strip()
    m = p["machine"]
    assert m["cpu_model"] and m["usable_cores"] >= 1 and m["memory_gib"] > 0 and isinstance(m["isa_flags"], list)
    assert len(m["load_average_before"]) == 3 and len(m["load_average_after"]) == 3
    import numpy
    import timm
    import torch

    assert p["versions"]["torch"] == torch.__version__.split("+")[0] or p["versions"]["torch"] == torch.__version__
    assert p["versions"]["timm"] == timm.__version__ and p["versions"]["numpy"] == numpy.__version__


def test_every_committed_result_names_its_machine_only_in_its_provenance() -> None:
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "benchmarks/results/*.json"], capture_output=True,
                             text=True).stdout.split()
    assert tracked
    for name in tracked:
        doc = json.loads((ROOT / name).read_text(encoding="utf-8"))
        p = doc.get("provenance") or {}
        machine = p.get("machine") or {}
        assert p.get("command") and {"cpu_model", "usable_cores", "load_average_after"} <= set(machine), (
            f"{name}: no provenance block with command and machine; rerun the benchmark that writes it")
        extra = sorted(set(doc) & MACHINE_KEYS)
        assert not extra, (f"{name}: {extra} beside the figures; the provenance block alone names the machine: "
                           "rerun the benchmark, or drop those keys where provenance holds the same facts")


def test_every_marked_table_matches_its_committed_result() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "tables", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_every_table_is_marked_in_a_doc_and_its_result_is_committed() -> None:
    marked = {m["name"] for path in tables.doc_files() for m in tables.MARKED.finditer(path.read_text("utf-8"))}
    assert set(tables.TABLES) <= marked, f"defined but shown nowhere: {sorted(set(tables.TABLES) - marked)}"
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "benchmarks/results"], capture_output=True,
                             text=True).stdout.split()
    for table in tables.TABLES.values():
        assert f"benchmarks/results/{table.source}" in tracked, f"{table.source} is not committed"


def test_check_names_the_table_that_drifted_and_tables_rewrites_it(tmp_path: Path, capsys) -> None:
    name = sorted(tables.TABLES)[0]
    good = tables.render(name, tables.TABLES[name], up="../")
    drifted = re.sub(r"\| (\d)", lambda m: f"| {(int(m[1]) + 1) % 10}", good, count=1)
    assert drifted != good
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "page.md"
    doc.write_text(f"# Page\n\n<!-- table:{name} -->\n{drifted}<!-- /table:{name} -->\n", encoding="utf-8")

    assert tables.main(["--check"], root=tmp_path) == 1
    assert f"docs/page.md: table {name!r} differs" in capsys.readouterr().err
    assert drifted in doc.read_text(encoding="utf-8")  # --check changes nothing

    assert tables.main([], root=tmp_path) == 0
    assert good in doc.read_text(encoding="utf-8")
    assert tables.main(["--check"], root=tmp_path) == 0


def test_a_table_from_a_result_without_provenance_names_the_file(tmp_path: Path, capsys) -> None:
    name = sorted(tables.TABLES)[0]
    source = tables.TABLES[name].source
    results = tmp_path / "results"
    results.mkdir()
    doc = json.loads((tables.RESULTS_DIR / source).read_text(encoding="utf-8"))
    doc.pop("provenance")
    (results / source).write_text(json.dumps(doc), encoding="utf-8")
    (tmp_path / "README.md").write_text(f"<!-- table:{name} -->\n<!-- /table:{name} -->\n", encoding="utf-8")

    assert tables.main(["--check"], root=tmp_path, results_dir=results) == 1
    assert f"benchmarks/results/{source} has no provenance block" in capsys.readouterr().err



def test_a_mutation_report_of_some_modules_keeps_the_others_entries(tmp_path: Path, monkeypatch) -> None:
    """`--modules folds` rewrites folds' entry only: the other modules' verdicts stay, each naming its run."""
    from benchmarks import mutation

    committed = json.loads((ROOT / "benchmarks" / "results" / "mutation.json").read_text(encoding="utf-8"))
    out = tmp_path / "mutation.json"
    out.write_text(json.dumps(committed), encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # the report changes into the project; put the cwd back
    assert mutation.main(["--report-only", "--modules", "folds", "--json", str(out)]) == 0
    doc = json.loads(out.read_text(encoding="utf-8"))
    old = {m["module"]: m for m in committed["modules"]}
    by = {k: committed["provenance"][k] for k in ("command", "commit", "date_utc")}
    for entry in doc["modules"]:
        if entry["module"] == "sustain/data/folds.py":
            assert "measured_by" not in entry  # measured by this run: its provenance says how
        else:
            assert entry == {**old[entry["module"]], "measured_by": old[entry["module"]].get("measured_by", by)}

"""The last section of benchmarks/gpu_check.sh: merge the sections' files into one JSON, judge the goals.

`python -m benchmarks.gpu_summary --work DIR --out OUT/gpu_check.json [--cpu]`
reads what the other sections left in DIR (sections.tsv written by the shell
script: name, exit status, seconds) and exits 1 when a section failed. The
goals (issue 17) are judged on a GPU only: on the CPU dry run their figures
are recorded and `met` is null.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: the project root on sys.path, for `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import arg_parser, write_result  # noqa: E402

# Goals of issue 17 for an H100/H200-class GPU (docs/performance.md › GPU check).
GOAL_STEP_RATIO = 0.95  # Sustain's guarded step / a plain timm step
GOAL_MFU = 0.40  # EVA02-Base bf16, with torch.compile if it helps


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_sections(path: Path) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            name, rc, seconds = line.split("\t")
            sections[name] = {"rc": int(rc), "seconds": float(seconds)}
    return sections


def read_junit(path: Path) -> dict[str, int] | None:
    """pytest's JUnit XML → test counts."""
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def read_demo(run_dir: Path) -> dict[str, Any] | None:
    run = _read_json(run_dir / "run.json")
    if run is None:
        return None
    checklist = run.get("checklist") or []
    history = _read_json(run_dir / "metrics_history.json") or {}
    return {"status": run.get("status"), "device": run.get("device"), "versions": run.get("versions"),
            "timings": run.get("timings"), "epochs_completed": run.get("epochs_completed"),
            "best_val_acc": (run.get("best") or {}).get("val_acc"),
            "images_per_second_per_epoch": history.get("images_per_second"),
            "checklist_passed": sum(bool(c.get("passed")) for c in checklist), "checklist_total": len(checklist),
            "checklist": [{"item": c.get("item"), "passed": c.get("passed"), "detail": c.get("detail")}
                          for c in checklist]}


def judge_goals(step: dict[str, Any] | None, loader: dict[str, Any] | None, on_gpu: bool) -> dict[str, Any]:
    """The three measurable goals of issue 17; `met` is None where there is nothing (or no GPU) to judge."""
    rows = (step or {}).get("rows", [])
    ratios = [r["ratio"] for r in rows if "ratio" in r]
    sustain = [r for r in rows if r.get("step") == "sustain"]
    mfus = [r["mfu"] for r in sustain if r.get("mfu") is not None]
    best_step = max((r["images_per_s"] for r in sustain), default=None)
    loader_256 = [r["images_per_s"] for r in (loader or {}).get("rows", [])
                  if r["images"] == "256px" and r["workers"] == (loader or {}).get("planned_workers")]

    def verdict(value: float | None, goal: float) -> bool | None:
        return None if value is None or not on_gpu else value >= goal

    lowest = min(ratios) if ratios else None
    best_mfu = max(mfus) if mfus else None
    loader_ips = loader_256[0] if loader_256 else None
    feeds = loader_ips / best_step if loader_ips and best_step else None
    return {
        "step_ratio": {"goal": GOAL_STEP_RATIO, "lowest": lowest, "all": ratios, "met": verdict(lowest, GOAL_STEP_RATIO)},
        "mfu": {"goal": GOAL_MFU, "best": best_mfu, "met": verdict(best_mfu, GOAL_MFU)},
        "loader_keeps_up_256px": {"goal": 1.0, "loader_images_per_s": loader_ips, "best_step_images_per_s": best_step,
                                  "loader_over_step": round(feeds, 3) if feeds else None, "met": verdict(feeds, 1.0)},
    }


def section_failures(doc: dict[str, Any], on_gpu: bool) -> list[str]:
    """What went wrong, one line each; empty when every section did its job."""
    problems = [f"section {name} exited {s['rc']}" for name, s in doc["sections"].items() if s["rc"] != 0]
    tests = doc["cuda_tests"]
    if tests is None:
        problems.append("no cuda test results")
    elif tests["failures"] or tests["errors"] or (on_gpu and tests["passed"] == 0):
        problems.append(f"cuda tests: {tests}")
    demo = doc["demo"]
    if demo is None or demo["status"] != "completed":
        problems.append("the demo run did not complete")
    elif on_gpu and demo["checklist_passed"] != demo["checklist_total"]:
        problems.append(f"demo checklist {demo['checklist_passed']}/{demo['checklist_total']}")
    if not (doc["ddp"] or {}).get("ok"):
        problems.append("torchrun DDP check failed")
    if not (doc["step"] or {}).get("rows"):
        problems.append("no step throughput")
    problems += [f"step at batch {e['batch']}, compile={e['compile']}: {e['error'][:300]}"
                 for e in (doc["step"] or {}).get("errors", [])]
    if not (doc["loader"] or {}).get("rows") or any(r["failed"] for r in doc["loader"]["rows"]):
        problems.append("loader throughput missing or images failed to load")
    return problems


def cmd_summary(args: argparse.Namespace) -> int:
    work, on_gpu = args.work, not args.cpu
    doc: dict[str, Any] = {
        "mode": "cpu dry run" if args.cpu else "gpu",
        "env": _read_json(work / "env.json"),
        "sections": read_sections(work / "sections.tsv"),
        "cuda_tests": read_junit(work / "cuda_tests.xml"),
        "demo": read_demo(work / "demo_run"),
        "step": _read_json(work / "step.json"),
        "ddp": _read_json(work / "ddp.json"),
        "loader": _read_json(work / "loader.json"),
    }
    doc["total_seconds"] = round(sum(s["seconds"] for s in doc["sections"].values()), 1)
    doc["goals"] = judge_goals(doc["step"], doc["loader"], on_gpu)
    doc["problems"] = section_failures(doc, on_gpu)
    doc["ok"] = not doc["problems"]
    write_result(args.out, doc)
    print_summary(doc)
    return 0 if doc["ok"] else 1


def print_summary(doc: dict[str, Any]) -> None:
    print(f"\n=== GPU check summary ({doc['mode']}, {doc['total_seconds']} s) ===")
    for name, s in doc["sections"].items():
        print(f"  {name:10s} exit {s['rc']}  {s['seconds']:7.1f} s")
    demo = doc["demo"]
    if demo:
        print(f"  demo: {demo['status']} on {demo['device']['type']} ({demo['device']['precision']}), "
              f"checklist {demo['checklist_passed']}/{demo['checklist_total']}")
    for name, g in doc["goals"].items():
        shown = {k: v for k, v in g.items() if k not in ("all",)}
        print(f"  goal {name}: {shown}")
    print("  OK" if doc["ok"] else "  PROBLEMS:\n    " + "\n    ".join(doc["problems"]))


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--work", type=Path, required=True, help="the folder the other sections wrote to")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--cpu", action="store_true", help="the dry run: goals recorded, not judged")
    return cmd_summary(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""`sustain train` against timm's own train.py, whole commands side by side, on the same work.

    python benchmarks/bench_vs_timm.py --timm /path/to/pytorch-image-models
    python benchmarks/bench_vs_timm.py --timm ~/timm-src --only photos --repeats 3

timm's train.py is not part of the timm wheel; get the source tree with
`git clone https://github.com/huggingface/pytorch-image-models` and pass its
folder (or its train.py). It runs with this environment's installed timm.
Without --timm the benchmark prints how to get it and exits 0 (skipped).

Two cases, each on one generated ImageFolder (`train/<class>/`, `val/<class>/`):
- `jpeg256`: 256 px JPEGs, resnet18 at 128 px;
- `photos`: 4032x3024 camera-like JPEGs, a tiny model at 224 px (loader-bound).
Both tools get the same model, input size, batch, epochs and augmentation
(RandomResizedCrop from 0.08, flip, RandAugment m9 capped at 9: timm's
RandAugment crashes on Pillow 13 without `mmax9`), the same recipe (AdamW at
1e-3, weight decay 0.05, no warmup, a cosine to 0 stepped per update,
gradient clipping at norm 1, label smoothing 0.1: Sustain's defaults warm
up for an epoch, timm's decay 2e-5 and clip nothing), the same images and
the same task: both train on `train/` (90%) and validate on `val/` (10%), Sustain
through a `data.split.assignment` file that gives each image its folder's
split, and timm's head has Sustain's 30 taxonomy classes (`--num-classes 30`;
the folders use 4 of them), so both accuracies are on the same images of the
same 30-way problem.

Rows (each says which work it is):
- `equal_resized_fp32` / `equal_resized_bf16`: both tools read a copy of the
  folder pre-resized to the shorter side Sustain's image cache stores (the
  resize is not timed); Sustain fills its cache from those files in the timed run.
  fp32 against timm fp32; Sustain `train.amp: on` against `timm --amp
  --amp-dtype bfloat16`. timm gets `-j WORKERS`.
- `equal_cache_off_fp32`: both decode the original files every epoch
  (Sustain `data.image_cache: off`), fp32.
- `defaults`: each tool out of the box on the originals: Sustain with `auto`
  everything (its CPU plan, its precision plan), timm's train.py with its own
  default workers (-j 4) and precision (fp32).
Each case trains for its own number of epochs (jpeg256 5, photos 10; `--epochs`
sets all): runs of training length, not of start-up alone. At 2 epochs the
fixed start and finish of each tool decide the ratio (docs/performance.md
keeps that run too). Every row runs each tool `--repeats` times (3),
alternating which goes first, each run cold (Sustain's caches empty); repeat r
trains both tools with seed r, so the median accuracy is over seeds. It reports the median and the range
of the wall clock of the whole command (imports and ingestion included), the
ratio of the medians timm / Sustain (> 1: Sustain finished first), the load
average before and after, and both tools' best val accuracy. For each Sustain
run it keeps run.json's `timings` (ingest, setup, epochs, final evaluation,
report), and per case the import time of a fresh interpreter (`pass`, `import
torch, timm`, Sustain's train path): together the breakdown of Sustain's wall
clock in docs/performance.md. Writes benchmarks/results/bench_vs_timm.json.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

if not __package__:  # run as a script: the project root on sys.path, for `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, arg_parser, results_file, write_result  # noqa: E402
from benchmarks.inputs import make_folder  # noqa: E402
from sustain.data.folds import ASSIGNMENT_COLUMNS  # noqa: E402
from sustain.taxonomy import MASTER_30  # noqa: E402

RESULTS = results_file("bench_vs_timm")
HOW_TO_GET = ("timm's train.py is needed: `git clone https://github.com/huggingface/pytorch-image-models` "
              "(or the lead's library `fetch` tool) and pass --timm <that folder>")
RAND_AUGMENT = "rand-m9-mstd0.5-inc1-mmax9"
NUM_CLASSES = len(MASTER_30)  # Sustain's head always has the taxonomy's 30 outputs; timm's gets as many

CASES: dict[str, dict[str, Any]] = {
    "jpeg256": {"model": "resnet18", "size": 128, "image": (256, 256), "images": 840, "batch": 32, "epochs": 5},
    "photos": {"model": "test_resnet", "size": 224, "image": (4032, 3024), "images": 96, "batch": 16, "epochs": 10},
}


ROWS: dict[str, dict[str, Any]] = {
    "equal_resized_fp32": {"data": "resized", "timm_amp": None, "timm_workers": "set",
                           "sustain": {"train": {"amp": "off"}}},
    "equal_resized_bf16": {"data": "resized", "timm_amp": "bfloat16", "timm_workers": "set",
                           "sustain": {"train": {"amp": "on"}}},
    "equal_cache_off_fp32": {"data": "original", "timm_amp": None, "timm_workers": "set",
                             "sustain": {"train": {"amp": "off"}, "data": {"image_cache": "off"}}},
    "defaults": {"data": "original", "timm_amp": None, "timm_workers": "default", "sustain": {}},
}


def resize_folder(src: Path, dst: Path, side: int) -> None:
    """A copy of `src` whose images have `side` px on their shorter side, stored as Sustain's image cache
    stores them (Lanczos, JPEG quality 95, 4:4:4)."""
    for path in sorted(src.rglob("*.jpg")):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as img:
            scale = side / min(img.size)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(target, "JPEG", quality=95, subsampling=0)


def assignment_file(data: Path) -> Path:
    return data.parent / f"{data.name}_split_assignment.csv"


def write_assignment(data: Path) -> Path:
    """The folder's own split as Sustain's `data.split.assignment`: each file's SHA-256 (the content hash
    ingestion computes) with `train` or `val`, the folder it sits in."""
    path = assignment_file(data)
    lines = [",".join(ASSIGNMENT_COLUMNS)]  # the header assigned_splits checks
    for split in ("train", "val"):
        lines += [f"{hashlib.sha256(f.read_bytes()).hexdigest()},{split}" for f in sorted((data / split).rglob("*.jpg"))]
    path.write_text("\n".join(lines) + "\n")
    return path


def timm_command(train_py: Path, data: Path, out: Path, case: dict[str, Any], workers: int | None,
                 amp: str | None, seed: int = 0) -> list[str]:
    cmd = [sys.executable, str(train_py), "--data-dir", str(data), "--train-split", "train", "--val-split", "val",
           "--model", case["model"], "--num-classes", str(NUM_CLASSES), "--img-size", str(case["size"]),
           "--input-size", "3", str(case["size"]), str(case["size"]), "-b", str(case["batch"]),
           "--epochs", str(case["epochs"]), "--aa", RAND_AUGMENT, "--scale", "0.08", "1.0",
           "--hflip", "0.5", "--reprob", "0", "--opt", "adamw", "--lr", "1e-3", "--warmup-epochs", "0",
           "--weight-decay", "0.05", "--clip-grad", "1.0", "--smoothing", "0.1", "--sched-on-updates",
           "--device", "cpu", "--no-prefetcher", "--log-interval", "1000", "--output", str(out),
           "--checkpoint-hist", "1", "--seed", str(seed)]
    if workers is not None:  # None: timm's own default (-j 4)
        cmd += ["-j", str(workers)]
    if amp:
        cmd += ["--amp", "--amp-dtype", amp]
    return cmd


def sustain_command(data: Path, out: Path, case: dict[str, Any], workers: str, extra: dict[str, dict[str, Any]],
                    seed: int = 0) -> list[str]:
    config = out / "bench.yaml"
    raw = {
        "seed": seed, "output_dir": str(out / "run"), "device": "cpu",
        "data": {"root": str(data), "cache_dir": str(out / "cache"),
                 "sources": [{"name": "bench", "root": ".", "label_map": "identity"}],
                 "split": {"train": 0.9, "val": 0.1, "test": 0.0, "assignment": str(assignment_file(data))}, "augment": "strong",
                 "augment_options": {"rand_augment": RAND_AUGMENT}, "num_workers": workers},
        "model": {"name": case["model"], "pretrained": False, "input_size": case["size"], "drop_path_rate": 0.0},
        "train": {"epochs": case["epochs"], "batch_size": case["batch"], "lr": 1e-3, "warmup_epochs": 0,
                  "weight_decay": 0.05, "grad_clip": 1.0, "label_smoothing": 0.1, "early_stopping_patience": 0,
                  "layer_decay": None},
    }
    for section, values in extra.items():
        raw[section].update(values)
    config.write_text(json.dumps(raw))  # JSON is YAML
    return [sys.executable, "-m", "sustain", "train", "--config", str(config)]


def timed(cmd: list[str], log: Path) -> tuple[float, int]:
    t = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    return time.perf_counter() - t, rc


def timm_val_acc(out: Path) -> float | None:
    """timm's best eval top-1 (a fraction), from the summary.csv its train.py writes."""
    best = None
    for summary in out.rglob("summary.csv"):
        with summary.open() as fh:
            for row in csv.DictReader(fh):
                if row.get("eval_top1"):
                    best = max(best or 0.0, float(row["eval_top1"]) / 100)
    return best


def sustain_facts(out: Path) -> dict[str, Any]:
    """Sustain's best weights on val, its precision, its CPU plan line and run.json's timings (the breakdown)."""
    run = json.loads((out / "run" / "run.json").read_text())
    plan = [line for line in (out / "sustain.log").read_text().splitlines() if "CPU plan" in line]
    return {"val_acc": run["final_evaluation"].get("val", {}).get("accuracy"), "precision": run["device"]["precision"],
            "cpu_plan": plan[0].split("CPU plan: ", 1)[-1] if plan else None, "timings": run["timings"]}


def import_seconds(code: str, repeats: int = 3) -> float:
    """The median wall clock of a fresh interpreter that runs `code` (imports): what a command pays before work."""
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        runs.append(time.perf_counter() - t)
    return round(statistics.median(runs), 2)


def one_run(tool: str, row: dict[str, Any], case: dict[str, Any], folders: dict[str, Path], out: Path,
            workers: int, sustain_workers: str, seed: int) -> dict[str, Any]:
    out.mkdir(parents=True)
    if tool == "timm":
        cmd = timm_command(folders["train_py"], folders[row["data"]], out, case,
                           workers if row["timm_workers"] == "set" else None, row["timm_amp"], seed)
    else:
        cmd = sustain_command(folders[row["data"]], out, case,
                              sustain_workers if row["sustain"] else "auto", row["sustain"], seed)
    load = os.getloadavg()[0]
    seconds, rc = timed(cmd, out / f"{tool}.log")
    result: dict[str, Any] = {"seconds": round(seconds, 1), "rc": rc, "seed": seed, "load_before": round(load, 2),
                              "load_after": round(os.getloadavg()[0], 2)}
    if rc != 0:
        print(f"  {tool} failed (exit {rc}); last lines of its log:\n" +
              "\n".join((out / f"{tool}.log").read_text().splitlines()[-15:]), flush=True)
    elif tool == "timm":
        result["val_acc"] = timm_val_acc(out)
    else:
        result.update(sustain_facts(out))
    shutil.rmtree(out, ignore_errors=True)  # each run starts cold; the next one must not find this one's caches
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r["rc"] == 0]
    seconds = [r["seconds"] for r in ok]
    accs = [r["val_acc"] for r in ok if r.get("val_acc") is not None]
    return {"median_seconds": statistics.median(seconds) if seconds else None,
            "range_seconds": [min(seconds), max(seconds)] if seconds else None,
            "median_val_acc": statistics.median(accs) if accs else None, "runs": runs}


def run_row(name: str, row_name: str, case: dict[str, Any], folders: dict[str, Path], tmp: Path,
            args: Any) -> dict[str, Any]:
    row = ROWS[row_name]
    runs: dict[str, list[dict[str, Any]]] = {"timm": [], "sustain": []}
    for rep in range(args.repeats):
        # Repeat r trains both tools with seed r: the median accuracy is over seeds, not one seed's luck
        # (with 84 val images one image is 1.2 points, and bf16 or a new seed moves a run by several).
        for tool in (("timm", "sustain") if rep % 2 == 0 else ("sustain", "timm")):
            print(f"[{name} {row_name}] repeat {rep + 1}/{args.repeats}: {tool}", flush=True)
            runs[tool].append(one_run(tool, row, case, folders, tmp / f"{row_name}_{tool}_{rep}",
                                      args.workers, args.sustain_workers, seed=rep))
    timm, sustain = summarize(runs["timm"]), summarize(runs["sustain"])
    ratio = (round(timm["median_seconds"] / sustain["median_seconds"], 2)
             if timm["median_seconds"] and sustain["median_seconds"] else None)
    acc_gap = (round((sustain["median_val_acc"] - timm["median_val_acc"]) * 100, 1)
               if sustain["median_val_acc"] is not None and timm["median_val_acc"] is not None else None)
    return {"case": name, "row": row_name, **{k: v for k, v in case.items() if k != "image"},
            "work": _work(row_name, case, args.workers), "timm": timm, "sustain": sustain, "ratio": ratio,
            "acc_gap_points": acc_gap, "load_range": _load_range(runs["timm"] + runs["sustain"])}


def _load_range(runs: list[dict[str, Any]]) -> list[float]:
    """The lowest and highest 1-minute load average seen before or after a run of the row."""
    loads = [r[k] for r in runs for k in ("load_before", "load_after")]
    return [min(loads), max(loads)]


def _work(row_name: str, case: dict[str, Any], workers: int) -> str:
    row = ROWS[row_name]
    files = f"a copy resized to {case['stored_side']} px" if row["data"] == "resized" else "the originals"
    timm = (f"both read {files}; timm "
            f"{f'-j {workers}' if row['timm_workers'] == 'set' else 'its default workers'}, "
            f"{'--amp --amp-dtype ' + row['timm_amp'] if row['timm_amp'] else 'fp32'}")
    sustain = "Sustain " + (", ".join(f"{s}.{k}: {v}" for s, kv in row["sustain"].items() for k, v in kv.items())
                            or "with auto everything")
    return f"{timm}; {sustain}"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_train_py(arg: str | None) -> Path | None:
    if not arg:
        return None
    path = Path(arg).expanduser()
    path = path / "train.py" if path.is_dir() else path
    return path if path.is_file() else None


def run_case(name: str, train_py: Path, args: Any) -> list[dict[str, Any]]:
    import timm

    from sustain.config import ModelConfig
    from sustain.data.image_cache import stored_side
    from sustain.transforms import resolve_data_config

    case = dict(CASES[name])
    if args.images:
        case["images"] = args.images
    if args.epochs:
        case["epochs"] = args.epochs
    model = timm.create_model(case["model"], pretrained=False)
    crop_pct = resolve_data_config(model, ModelConfig(name=case["model"], input_size=case["size"]))["crop_pct"]
    case["stored_side"] = stored_side(case["size"], crop_pct)  # what Sustain's cache keeps at `auto`
    with tempfile.TemporaryDirectory(prefix=f"bench_vs_timm_{name}_") as tmp:
        tmp_path = Path(tmp)
        folders = {"train_py": train_py, "original": tmp_path / "data", "resized": tmp_path / "resized"}
        make_folder(folders["original"], case["image"], case["images"])
        write_assignment(folders["original"])
        rows = args.rows or list(ROWS)
        if any(ROWS[r]["data"] == "resized" for r in rows):
            resize_folder(folders["original"], folders["resized"], case["stored_side"])
            write_assignment(folders["resized"])
        imports = {"python": import_seconds("pass"), "torch_timm": import_seconds("import torch, timm"),
                   "sustain_train": import_seconds("import sustain.cli, sustain.training.engine")}
        out = []
        for r in rows:
            row = run_row(name, r, case, folders, tmp_path, args)
            out.append({**row, "import_seconds": imports, "sustain_breakdown": breakdown(row["sustain"]["runs"],
                                                                                          imports)})
        return out


def breakdown(runs: list[dict[str, Any]], imports: dict[str, float]) -> dict[str, float] | None:
    """Where the median Sustain run's wall clock went: imports (a fresh interpreter's), ingest, the rest of
    the set-up before the first step, the epochs, the final evaluation, the report, and what is left
    (reading the config, closing, the interpreter's exit)."""
    ok = [r for r in runs if r["rc"] == 0 and r.get("timings")]
    if not ok:
        return None
    median = sorted(ok, key=lambda r: r["seconds"])[len(ok) // 2]
    t = median["timings"]
    parts = {"imports": imports["sustain_train"], "ingest": t["ingest_seconds"],
             "setup_after_ingest": t["setup_seconds"] - t["ingest_seconds"], "epochs": t["train_seconds"],
             "final_evaluation": t["final_evaluation_seconds"], "report": t.get("report_seconds", 0.0)}
    # total_seconds runs from train()'s start to the final evaluation's end; the epochs and set-up inside it
    parts["between_epochs_and_setup"] = t["total_seconds"] - t["setup_seconds"] - t["train_seconds"] - \
        t["final_evaluation_seconds"]
    parts["rest"] = median["seconds"] - imports["sustain_train"] - t["total_seconds"] - parts["report"]
    return {"wall": median["seconds"], **{k: round(v, 2) for k, v in parts.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--timm", help="timm source tree (or its train.py)")
    parser.add_argument("--only", choices=sorted(CASES), action="append")
    parser.add_argument("--rows", choices=list(ROWS), action="append")
    parser.add_argument("--epochs", type=int, default=None, help="override each case's epochs (jpeg256 5, photos 10)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="timm's -j in the equal-work rows")
    parser.add_argument("--sustain-workers", default="auto", help="data.num_workers for Sustain in the equal-work rows")
    parser.add_argument("--images", type=int, default=None, help="override each case's image count")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    train_py = find_train_py(args.timm or os.environ.get("TIMM_TRAIN_PY"))
    if train_py is None:
        print(f"bench_vs_timm skipped: {HOW_TO_GET}")
        return 0
    rows = [r for name in args.only or list(CASES) for r in run_case(name, train_py, args)]
    print(f"\n{'case':<8} {'row':<22} {'timm s (range)':>18} {'sustain s (range)':>18} {'ratio':>6} "
          f"{'timm acc':>8} {'sus acc':>8}")
    for r in rows:
        t, s = r["timm"], r["sustain"]
        print(f"{r['case']:<8} {r['row']:<22} {_fmt(t):>18} {_fmt(s):>18} {_or_nan(r['ratio']):>6.2f} "
              f"{_or_nan(t['median_val_acc']):>8.3f} {_or_nan(s['median_val_acc']):>8.3f}")
    print("ratio = timm median seconds / Sustain median seconds (> 1: Sustain finished first)")
    write_result(args.output, {"rows": rows}, end="")
    return 1 if any(run["rc"] for r in rows for tool in ("timm", "sustain") for run in r[tool]["runs"]) else 0


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value  # 0.0 is a result (no val image right), None is none


def _fmt(summary: dict[str, Any]) -> str:
    if summary["median_seconds"] is None:
        return "failed"
    lo, hi = summary["range_seconds"]
    return f"{summary['median_seconds']:.1f} ({lo:.0f}-{hi:.0f})"


if __name__ == "__main__":
    sys.exit(main())

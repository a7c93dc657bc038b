"""fp32 against bf16 autocast on the CPU: the same config and seed, what each learns and how fast.

    python benchmarks/bench_precision.py
    python benchmarks/bench_precision.py --only jpeg_resnet18 --epochs 3 --images 480
    python benchmarks/bench_precision.py --seeds 3 --only demo    # parity read against fp32's seed-to-seed spread

Three cases, each trained twice by `sustain train` (train.amp=off, then =on, or
the other way round: the order alternates from case to case):
- `demo`: configs/demo.yaml on the procedural demo lake (test_vit, 64 px);
- `jpeg_resnet18`: resnet18 at 128 px on a generated folder of 256 px JPEGs;
- `eva02_tiny`: eva02_tiny_patch14_224 at 112 px on the same folder.
Each row reports the final evaluation of the best weights on val (accuracy,
macro-F1), the train and val loss curves and the training images/s (median over
the epochs after the first), with the load average before and after. With
`--seeds N` each case trains with seeds 0..N-1 and `parity` gives, per case,
the mean accuracy and macro-F1 of each precision, bf16's difference of the
means and fp32's own range from seed to seed. With `--auto` each case also
trains with `train.amp=auto`: which precision the probe chose, and its
images/s. Goals (issue #25): accuracy within 1 point and macro-F1 within 0.01 of fp32;
bf16 images/s >= 1.2x fp32 on an AVX512-BF16 CPU without AMX, >= 1.5x with AMX.
Writes benchmarks/results/bench_precision.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: the project root on sys.path, for `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, arg_parser, results_file, write_result  # noqa: E402
from benchmarks.inputs import make_folder  # noqa: E402

RESULTS = results_file("bench_precision")
FOLDER_CASE = {"split": {"train": 0.7, "val": 0.3, "test": 0.0}, "augment": "light", "lr": 1e-3}
CASES: dict[str, dict[str, Any]] = {
    "demo": {"model": "test_vit", "size": 64, "batch": 32},
    "jpeg_resnet18": {"model": "resnet18", "size": 128, "batch": 32},
    "eva02_tiny": {"model": "eva02_tiny_patch14_224", "size": 112, "batch": 32},
}


def demo_config(lake: Path, out: Path, epochs: int, seed: int) -> Path:
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    raw["data"].update(root=str(lake), num_workers="auto")
    raw["train"].update(epochs=epochs, early_stopping_patience=0)
    raw.update(output_dir=str(out), device="cpu", seed=seed)
    return _write(out.parent / f"{out.name}.yaml", raw)


def folder_config(data: Path, out: Path, case: dict[str, Any], epochs: int, seed: int) -> Path:
    return _write(out.parent / f"{out.name}.yaml", {
        "seed": seed, "output_dir": str(out), "device": "cpu",
        "taxonomy": {"classes": sorted(p.name for p in (data / "train").iterdir()), "bins": None, "sets": {}},
        "data": {"root": str(data), "sources": [{"name": "bench", "root": ".", "label_map": "identity"}],
                 "split": FOLDER_CASE["split"], "augment": FOLDER_CASE["augment"]},
        "model": {"name": case["model"], "pretrained": False, "input_size": case["size"], "drop_path_rate": 0.0},
        "train": {"epochs": epochs, "batch_size": case["batch"], "lr": FOLDER_CASE["lr"], "layer_decay": None,
                  "early_stopping_patience": 0, "warmup_epochs": 0.5},
    })


def _write(path: Path, raw: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw), encoding="utf-8")  # JSON is YAML
    return path


def train_once(config: Path, amp: str, log: Path) -> dict[str, Any]:
    """One `sustain train`; what it learned (best weights on val) and how fast it went."""
    out = Path(json.loads(config.read_text())["output_dir"])
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.call([sys.executable, "-m", "sustain", "train", "--config", str(config),
                              "--set", f"train.amp={amp}"], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    seconds = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"sustain train (amp={amp}) failed with exit {rc}; see {log}:\n"
                         + "\n".join(log.read_text().splitlines()[-15:]))
    return read_run(out, amp, seconds, load_before)


def read_run(out: Path, amp: str, seconds: float, load_before: float) -> dict[str, Any]:
    """What a finished run learned (its best weights on val) and how fast it went, from its files."""
    history = json.loads((out / "metrics_history.json").read_text())
    run = json.loads((out / "run.json").read_text())
    final = run["final_evaluation"].get("val", {})
    speeds = [s for s in history["images_per_second"][1:] if s] or history["images_per_second"]
    return {"amp": amp, "precision": run["device"]["precision"], "wall_seconds": round(seconds, 1),
            "val_acc": final.get("accuracy"), "val_macro_f1": final.get("macro_f1"),
            "train_loss": history["train_loss"], "val_loss": history["val_loss"], "val_acc_curve": history["val_acc"],
            "images_per_second": round(statistics.median(speeds), 1), "workers": run["device"].get("num_workers"),
            "timings": run.get("timings"),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def run_case(name: str, tmp: Path, epochs: int, images: int, bf16_first: bool, seed: int,
             auto: bool = False) -> dict[str, Any]:
    out = tmp / f"{name}_seed{seed}"
    if name == "demo":
        lake = tmp / "demo_lake"
        if not lake.exists():
            subprocess.check_call([sys.executable, "-m", "sustain", "data", "demo", "--out", str(lake)], cwd=ROOT,
                                  stdout=subprocess.DEVNULL)
        configs = {amp: demo_config(lake, out / amp, epochs, seed) for amp in ("off", "on", "auto")}
    else:
        data = tmp / "jpeg256"
        if not data.exists():
            make_folder(data, (256, 256), images)
        configs = {amp: folder_config(data, out / amp, CASES[name], epochs, seed) for amp in ("off", "on", "auto")}
    runs = {}
    for amp in (("on", "off") if bf16_first else ("off", "on")) + (("auto",) if auto else ()):
        print(f"[{name} seed {seed}] train.amp={amp} ...", flush=True)
        runs[amp] = train_once(configs[amp], amp, out / f"{amp}.log")
    row = pair_row(name, epochs, seed, "bf16 first" if bf16_first else "fp32 first", runs["off"], runs["on"])
    if auto:  # what `train.amp: auto` chose for this case (the probe's verdict), and how fast it then trained
        row["auto"] = {k: runs["auto"][k] for k in ("precision", "images_per_second", "val_acc", "wall_seconds")}
    return row


def pair_row(name: str, epochs: int, seed: int, order: str, fp32: dict[str, Any], bf16: dict[str, Any]) -> dict[str, Any]:
    """One case and seed: both runs and what bf16 changed."""
    return {"case": name, **CASES[name], "epochs": epochs, "seed": seed, "order": order, "fp32": fp32, "bf16": bf16,
            "acc_delta_points": _delta(bf16["val_acc"], fp32["val_acc"], 100),
            "macro_f1_delta": _delta(bf16["val_macro_f1"], fp32["val_macro_f1"], 1),
            "speedup": round(bf16["images_per_second"] / fp32["images_per_second"], 2),
            "load": [min(fp32["load_before"], bf16["load_before"]), max(fp32["load_after"], bf16["load_after"])]}


def parity_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A case over its seeds: the mean accuracy and macro-F1 of each precision, bf16's difference of the
    means, and fp32's own spread from seed to seed (what a difference has to exceed to mean anything)."""
    out: dict[str, Any] = {"seeds": len(rows)}
    for key, scale in (("val_acc", 100), ("val_macro_f1", 1)):
        fp32 = [r["fp32"][key] for r in rows]
        bf16 = [r["bf16"][key] for r in rows]
        out[key] = {"fp32": [round(v, 4) for v in fp32], "bf16": [round(v, 4) for v in bf16],
                    "mean_delta": round((statistics.mean(bf16) - statistics.mean(fp32)) * scale, 3),
                    "fp32_seed_range": round((max(fp32) - min(fp32)) * scale, 3)}
    return out


def _delta(a: float | None, b: float | None, scale: float) -> float | None:
    return None if a is None or b is None else round((a - b) * scale, 3)


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--only", choices=sorted(CASES), action="append")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=480, help="JPEGs in the generated folder (70%% train)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train each case with seeds 0..N-1: the seed-to-seed spread of fp32 is the noise "
                             "against which bf16's difference is read")
    parser.add_argument("--auto", action="store_true", help="also train with train.amp=auto: what the probe chose")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_precision_") as tmp:
        for i, name in enumerate(args.only or list(CASES)):
            for seed in range(args.seeds):
                rows.append(run_case(name, Path(tmp), args.epochs, args.images, bf16_first=(i + seed) % 2 == 1,
                                     seed=seed, auto=args.auto))
    print(f"\n{'case':<14} {'fp32 acc':>8} {'bf16 acc':>8} {'Δ pts':>6} {'ΔF1':>7} {'fp32 img/s':>10} "
          f"{'bf16 img/s':>10} {'×':>5}  load")
    for r in rows:
        f, b = r["fp32"], r["bf16"]
        print(f"{r['case']:<14} {f['val_acc']:>8.3f} {b['val_acc']:>8.3f} {r['acc_delta_points']:>6.1f} "
              f"{r['macro_f1_delta']:>7.3f} {f['images_per_second']:>10.1f} {b['images_per_second']:>10.1f} "
              f"{r['speedup']:>5.2f}  {f['load_before']}-{b['load_after']}")
    parity = {name: parity_summary([r for r in rows if r["case"] == name]) for name in dict.fromkeys(r["case"] for r in rows)}
    write_result(args.output, {"rows": rows, "parity": parity}, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

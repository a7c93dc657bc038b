"""Temperature scaling and accept-or-review on the demo lake and a digits lake (issue #29).

    python benchmarks/bench_calibration.py                       # demo + digits (smoothing 0.1 and 0)
    python benchmarks/bench_calibration.py --only digits_ls0.1 --epochs 4

Each case trains with `sustain.training.engine.train` (the end of training fits T on val and
chooses the threshold at `eval.accept_accuracy`), then reads the run's own files: the test
report (accuracy, ECE before and after) and ``predictions_{val,test}.npz`` (calibrated
probabilities; the raw softmax is recovered exactly as softmax(T · log p)). It reports test NLL
before and after, accuracy before and after (the arg-max cannot move), and at each target the
val threshold, test coverage and accepted accuracy with its 95% Clopper–Pearson interval, for
the bin (where the taxonomy has bins) and for the class. The digits lake is scikit-learn's 1,797
scanned 8×8 digits upscaled to 32×32 PNGs, split 0.6/0.2/0.2; it runs with label smoothing 0.1
(the default) and 0, to measure how much of the underconfidence smoothing causes.
Writes benchmarks/results/bench_calibration.json (its provenance: the machine, commit and load average).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as a script: the project root on sys.path, for `benchmarks` and `sustain`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, arg_parser, results_file, write_result  # noqa: E402

RESULTS = results_file("bench_calibration")
TARGETS = (0.95, 0.98)
DIGITS = [f"digit_{d}" for d in range(10)]
CASES: dict[str, dict[str, Any]] = {
    "demo": {"lake": "demo", "overrides": []},
    "digits_ls0.1": {"lake": "digits", "overrides": ["train.label_smoothing=0.1"]},
    "digits_ls0": {"lake": "digits", "overrides": ["train.label_smoothing=0.0"]},
}


def make_digits_lake(root: Path) -> Path:
    """`root/digits/digit_<d>/<i>.png`: scikit-learn's digits, 8×8 → 32×32 (bilinear), grey as RGB."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / "digits" / DIGITS[label]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image / 16.0 * 255).astype(np.uint8)
        Image.fromarray(pixels, "L").resize((32, 32), Image.BILINEAR).convert("RGB").save(folder / f"{i:04d}.png")
    return root


def digits_overrides(lake: Path) -> list[str]:
    return [f"data.root={lake}", f"taxonomy.classes={DIGITS}", "taxonomy.bins=null",
            "data.sources=[{name: digits, root: digits, label_map: identity}]",
            "data.split={train: 0.6, val: 0.2, test: 0.2}", "data.augment=none",
            "model.name=test_resnet", "model.input_size=32", "train.lr=3.0e-3"]


def train_case(name: str, lakes: dict[str, Path], epochs: int, out: Path) -> float:
    from sustain.config import load_config
    from sustain.training.engine import train

    case = CASES[name]
    lake_args = digits_overrides(lakes["digits"]) if case["lake"] == "digits" else [f"data.root={lakes['demo']}"]
    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        *lake_args, f"output_dir={out}", f"train.epochs={epochs}", "device=cpu", "tracking.tensorboard=false",
        f"eval.accept_accuracy={TARGETS[-1]}", *case["overrides"]])
    t = time.perf_counter()
    result = train(cfg)
    if not result.ok:
        raise RuntimeError(f"{name}: training failed ({result.stop_reason})")
    return time.perf_counter() - t


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _fine_nll(probs: np.ndarray, targets: np.ndarray) -> float:
    fine = targets.sum(axis=1) == 1
    p = probs[fine][targets[fine]]
    return float(-np.log(np.clip(p, 1e-12, None)).mean())


def measure(run: Path) -> dict[str, Any]:
    """The case's figures, from the run's own files."""
    from sustain.artifacts import ModelMeta
    from sustain.evaluate.calibration import uncalibrate
    from sustain.evaluate.gallery import load_predictions
    from sustain.evaluate.selective import accept_report, choose_thresholds
    from sustain.taxonomy import taxonomy_from_meta

    meta = ModelMeta.read(run)
    taxonomy = taxonomy_from_meta(meta.to_dict())
    t = meta.temperature
    val, test = load_predictions(run / "predictions_val.npz"), load_predictions(run / "predictions_test.npz")
    raw = uncalibrate(test.probs, t)
    fine = test.targets.sum(axis=1) == 1
    truth = test.targets[fine].argmax(axis=1)
    report = read_json(run / "test_classification_report.json")
    val_report = read_json(run / "classification_report.json")
    out: dict[str, Any] = {
        "temperature": t, "calibration": meta.calibration, "n_val": int(len(val.probs)), "n_test": int(len(test.probs)),
        "val_ece_before": val_report["expected_calibration_error_uncalibrated"],
        "val_ece_after": val_report["expected_calibration_error"],
        "test_ece_before": report["expected_calibration_error_uncalibrated"],
        "test_ece_after": report["expected_calibration_error"],
        "test_nll_before": _fine_nll(raw, test.targets), "test_nll_after": _fine_nll(test.probs, test.targets),
        "test_accuracy_before": float((raw[fine].argmax(axis=1) == truth).mean()),
        "test_accuracy_after": float((test.probs[fine].argmax(axis=1) == truth).mean()),
        "engine_threshold": {"target": meta.accept_accuracy, "on": meta.accept_on, "threshold": meta.accept_threshold},
        "targets": {},
    }
    for target in TARGETS:
        chosen = choose_thresholds(val.probs, val.targets, taxonomy, target)
        out["targets"][str(target)] = {"val_thresholds": chosen,
                                       "test": accept_report(test.probs, test.targets, taxonomy, target, chosen)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--only", choices=sorted(CASES), action="append", help="run only this case (repeatable)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every case (demo.yaml: 10)")
    parser.add_argument("--demo-lake", type=Path, help="an existing demo lake (default: generate one)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.getLogger("sustain").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_calibration_") as tmp:
        lakes = {"demo": args.demo_lake or _demo_lake(Path(tmp) / "demo"),
                 "digits": make_digits_lake(Path(tmp) / "digits_lake")}
        for name in args.only or list(CASES):
            seconds = train_case(name, lakes, args.epochs, Path(tmp) / name)
            row = {"case": name, "epochs": args.epochs, "train_seconds": round(seconds, 1),
                   "overrides": CASES[name]["overrides"], **measure(Path(tmp) / name)}
            rows.append(row)
            print(f"{name:14s} T {row['temperature']:.3f}  test ECE {row['test_ece_before']:.3f} → "
                  f"{row['test_ece_after']:.3f}  NLL {row['test_nll_before']:.3f} → {row['test_nll_after']:.3f}  "
                  f"acc {row['test_accuracy_after']:.3f}")
    write_result(args.json, {"results": rows})
    print(f"written: {args.json}")
    return 0


def _demo_lake(path: Path) -> Path:
    from sustain.data.demo import make_demo_lake

    make_demo_lake(path, seed=0)
    return path


if __name__ == "__main__":
    sys.exit(main())

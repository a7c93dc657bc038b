"""Precision and recall of the label-issue finder against injected label flips, for every method on the same probabilities.

Lakes from scikit-learn's 1,797 digit images (8×8, 10 classes): an easy one
(all 64 pixels, an RBF SVM, calibrated, ~98% out-of-fold accuracy), two hard ones (each image
pooled to 4×4 = 16 features: a regularised logistic regression, calibrated
but weak, and Gaussian naive Bayes, over-confident as many networks are; both
~85%, far from perfect) and a very hard one (2×2 = 4 features, ~55%: where no rule can be precise). In each, `--flip` of the labels are moved to a random other class;
out-of-fold probabilities come from a stratified `--folds`-fold
cross-validation trained on the *noisy* labels, so every image is scored by a
model that never saw it. Then `sustain.evaluate.label_issues.find_label_issues`
runs with each cleanlab ``filter_by`` and with the fixed-threshold rule on the
same probabilities, and its list is scored against the flips. Repeated over
`--seeds`; the JSON keeps every seed and the mean.

    python benchmarks/bench_label_issues.py [--seeds 5] [--flip 0.05] [--folds 5] [--out FILE]

With `--crossval`, the probabilities come from Sustain itself: the 1,797 digits
become a lake of 32 px PNGs (one folder per class, `--flip` of them filed under
a wrong class), `sustain crossval --folds K` trains a tiny ViT (`test_vit`,
`--epochs`) on every fold, and the finder runs on its `predictions_oof.npz`;
the `label_issues.csv` it shipped is scored too.

    python benchmarks/bench_label_issues.py --crossval [--folds 5] [--epochs 20] [--out FILE]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import arg_parser, results_file, write_result

GOAL = {"recall": 0.80, "precision": 0.60}


def lakes() -> dict[str, tuple[np.ndarray, np.ndarray, object]]:
    """name -> (features, true labels, classifier factory): easy, hard, and one too hard to use."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    x, y = load_digits(return_X_y=True)

    def pooled(side: int) -> np.ndarray:  # 8×8 → side×side mean pooling: fewer, blurrier features
        k = 8 // side
        return x.reshape(-1, side, k, side, k).mean(axis=(2, 4)).reshape(len(x), side * side)

    return {
        "easy_digits_8x8_svc": (x, y, lambda: CalibratedClassifierCV(SVC(), ensemble=False)),
        "hard_digits_4x4_logreg": (pooled(4), y, lambda: make_pipeline(StandardScaler(),
                                                                      LogisticRegression(C=0.1, max_iter=2000))),
        "hard_digits_4x4_naive_bayes": (pooled(4), y, GaussianNB),
        "very_hard_digits_2x2_naive_bayes": (pooled(2), y, GaussianNB),
    }


def flip_labels(y: np.ndarray, share: float, n_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels, indices flipped): `share` of the rows moved to a uniformly drawn other class."""
    flipped = np.sort(rng.choice(len(y), size=round(share * len(y)), replace=False))
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, n_classes, size=len(flipped))) % n_classes
    return noisy, flipped


def out_of_fold(x: np.ndarray, labels: np.ndarray, make, folds: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    probs = np.zeros((len(x), int(labels.max()) + 1))
    for train, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, labels):
        model = make().fit(x[train], labels[train])
        probs[np.ix_(held, model.classes_)] = model.predict_proba(x[held])
    return probs


def score(found: list[tuple[int, float]], flipped: np.ndarray) -> dict:
    hits = len({i for i, _ in found} & set(flipped.tolist()))
    return {"listed": len(found), "true_flips": hits,
            "precision": hits / len(found) if found else None, "recall": hits / len(flipped)}


def one_seed(x, y, make, flip: float, folds: int, seed: int) -> dict:
    from sustain.evaluate.label_issues import METHODS, find_label_issues

    rng = np.random.default_rng(seed)
    noisy, flipped = flip_labels(y, flip, int(y.max()) + 1, rng)
    probs = out_of_fold(x, noisy, make, folds, seed)
    out = {"seed": seed, "n": len(y), "flips": len(flipped),
           "oof_accuracy_vs_true": float((probs.argmax(1) == y).mean()), "methods": {}}
    for method in METHODS:
        t0 = time.perf_counter()
        found = find_label_issues(probs, noisy, method=method)
        out["methods"][method] = {**score(found, flipped), "seconds": round(time.perf_counter() - t0, 4)}
    return out


def mean_over(seeds: list[dict]) -> dict:
    def avg(values: list) -> float | None:
        values = [v for v in values if v is not None]
        return round(float(np.mean(values)), 4) if values else None

    out = {}
    for method in seeds[0]["methods"]:
        m = {k: avg([s["methods"][method][k] for s in seeds]) for k in ("precision", "recall", "listed")}
        p, r = m["precision"] or 0.0, m["recall"] or 0.0
        m["f1"] = round(2 * p * r / (p + r), 4) if p + r else 0.0
        m["meets_goal"] = p >= GOAL["precision"] and r >= GOAL["recall"]
        out[method] = m
    return {"oof_accuracy_vs_true": avg([s["oof_accuracy_vs_true"] for s in seeds]), "methods": out}


def digits_lake(root: Path, flip: float, seed: int) -> tuple[dict[str, int], set[str]]:
    """The digits as 32 px PNGs under root/digits/d<class>/; (true class per file name, flipped names)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    noisy, flipped = flip_labels(digits.target, flip, 10, np.random.default_rng(seed))
    truth = {}
    for i, (pixels, label) in enumerate(zip(digits.images, noisy, strict=True)):
        name = f"digit_{i:04d}.png"
        folder = root / "digits" / f"d{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BICUBIC).save(folder / name)
        truth[name] = int(digits.target[i])
    return truth, {f"digit_{i:04d}.png" for i in flipped}


def crossval_run(args) -> dict:
    """`sustain crossval` on the digits lake; every finder method on its out-of-fold probabilities."""
    import csv
    import tempfile

    from sustain.config import config_from_dict
    from sustain.evaluate.gallery import load_predictions
    from sustain.evaluate.label_issues import METHODS, find_label_issues
    from sustain.training import CrossvalOptions, run_crossval

    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "lake", Path(tmp) / "out"
        truth, flipped = digits_lake(root, args.flip, seed=0)
        classes = [f"d{c}" for c in range(10)]
        cfg = config_from_dict({
            "seed": 0, "output_dir": str(out), "device": "cpu",
            "taxonomy": {"classes": classes, "bins": None, "sets": {}},
            "data": {"root": str(root), "sources": [{"name": "digits", "root": "digits", "label_map": "identity"}],
                     "augment": "light", "num_workers": 0},
            "model": {"name": "test_vit", "pretrained": False, "input_size": 32, "drop_path_rate": 0.0},
            "train": {"epochs": args.epochs, "batch_size": 32, "lr": 2e-3, "layer_decay": None, "warmup_epochs": 1,
                      "early_stopping_patience": 0},
            "tracking": {"tensorboard": False}})
        t0 = time.perf_counter()
        run_crossval(cfg, CrossvalOptions(folds=args.folds))
        seconds = time.perf_counter() - t0
        folder = out / "crossval" / "kfold"
        oof = load_predictions(folder / "predictions_oof.npz")
        names = [Path(str(p)).name for p in oof.paths]
        given = np.array([classes.index(str(g)) for g in oof.labels])
        flips = np.array([i for i, n in enumerate(names) if n in flipped])
        with open(folder / "label_issues.csv", encoding="utf-8") as fh:
            shipped = [Path(row["path"]).name for row in csv.DictReader(fh)]
    result = {"seconds": round(seconds, 1), "images": len(names), "flips_in_lake": len(flipped),
              "flips_scored": len(flips), "epochs": args.epochs, "folds": args.folds,
              "oof_accuracy_vs_true": float(np.mean([oof.probs[i].argmax() == truth[n] for i, n in enumerate(names)])),
              "label_issues_csv": score([(names.index(n), 0.0) for n in shipped], flips), "methods": {}}
    for method in METHODS:
        result["methods"][method] = score(find_label_issues(oof.probs, given, method=method), flips)
    return result


def run(argv: list[str]) -> dict:
    parser = arg_parser(__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--flip", type=float, default=0.05)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--crossval", action="store_true", help="probabilities from `sustain crossval` on the digits")
    parser.add_argument("--epochs", type=int, default=20, help="with --crossval: epochs per fold")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.crossval:
        result = {"goal": GOAL, "flip": args.flip, "crossval": crossval_run(args)}
        write_result(args.out or results_file("bench_label_issues_crossval"), result)
        return result
    args.out = args.out or results_file("bench_label_issues")
    result = {"goal": GOAL, "flip": args.flip, "folds": args.folds, "lakes": {}}
    for name, (x, y, make) in lakes().items():
        seeds = [one_seed(x, y, make, args.flip, args.folds, s) for s in range(args.seeds)]
        result["lakes"][name] = {"mean": mean_over(seeds), "seeds": seeds}
    write_result(args.out, result)
    return result


def main(argv: list[str]) -> int:
    result = run(argv)
    if "crossval" in result:
        cv = result["crossval"]
        print(f"crossval: {cv['images']} images, {cv['flips_scored']} flips, out-of-fold accuracy "
              f"{cv['oof_accuracy_vs_true']:.1%}, {cv['seconds']:.0f} s")
        for method, m in {"label_issues.csv": cv["label_issues_csv"], **cv["methods"]}.items():
            p = "n/a" if m["precision"] is None else f"{m['precision']:.1%}"
            print(f"  {method:24s} precision {p:>6s}  recall {m['recall']:.1%}  listed {m['listed']}")
        return 0
    for name, lake in result["lakes"].items():
        print(f"{name}: out-of-fold accuracy {lake['mean']['oof_accuracy_vs_true']:.1%}")
        for method, m in lake["mean"]["methods"].items():
            p = "n/a" if m["precision"] is None else f"{m['precision']:.1%}"
            print(f"  {method:24s} precision {p:>6s}  recall {m['recall']:.1%}  F1 {m['f1']:.3f}  "
                  f"listed {m['listed']}{'  meets the goal' if m['meets_goal'] else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

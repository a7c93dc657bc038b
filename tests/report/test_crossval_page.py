"""The crossval report page from a scheme folder's files alone, in a real browser (headless Chromium)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from browser import chromium, render
from engine_helpers import TINY_CLASSES, make_tiny_lake
from test_report_browser import PROBE

from sustain.artifacts import CrossvalRecord
from sustain.data.folds import Fold
from sustain.evaluate.crossval import (
    OOF_SPLIT,
    fold_entry,
    oof_summary,
    save_oof,
    shift_gaps,
    summarize,
)
from sustain.evaluate.gallery import SamplePredictions, predictions_file
from sustain.evaluate.label_issues import write_label_issues
from sustain.report.crossval_page import build_crossval_page

pytestmark = [pytest.mark.slow,  # a real browser process
              pytest.mark.skipif(chromium() is None and not os.environ.get("SUSTAIN_REQUIRE_CHROMIUM"),
                                 reason="chromium is not installed (apt-get install -y chromium)")]


def _report(acc: float, n: int) -> dict:
    per_class = {c: {"f1-score": acc, "support": n // len(TINY_CLASSES)} for c in TINY_CLASSES}
    return {"classes": TINY_CLASSES, "n_fine": n, "n_set": 0, "accuracy": acc, "macro_f1": acc - 0.05,
            "set_accuracy": None, **per_class}


def scheme_folder(folder: Path, lake: Path) -> Path:
    """A `--by source` folder: two held-out sources, out-of-fold predictions of real images, label issues."""
    paths = sorted(str(p) for p in (lake / "tiny").rglob("*.png"))
    n = len(paths)
    rng = np.random.default_rng(0)
    given = np.array([TINY_CLASSES.index(Path(p).parent.name) for p in paths])
    probs = rng.dirichlet(np.ones(len(TINY_CLASSES)), size=n).astype(np.float32)
    sources = np.array(["a_very_long_source_name_from_kaggle_" + ("x" if i % 2 else "y") for i in range(n)])
    oof = SamplePredictions(OOF_SPLIT, tuple(TINY_CLASSES), np.array(paths), sources,
                            np.array([TINY_CLASSES[g] for g in given]), probs, np.eye(len(TINY_CLASSES), dtype=bool)[given])
    save_oof(folder / predictions_file(OOF_SPLIT), oof, np.arange(n) % 2)
    folds = [Fold(i, f"source_{s}", s, ("test",) * (n // 2) + ("train",) * (n - n // 2)) for i, s in
             enumerate(sorted(set(sources)))]
    entries = [fold_entry(f, _report(0.6 + 0.1 * f.index, n // 2), f.name) for f in folds]
    in_domain = {s: {"accuracy": 0.9, "n_fine": 30, "accuracy_ci95": [0.74, 0.97]} for s in set(sources)}
    record = CrossvalRecord("source", entries, summarize(entries), oof_summary(oof),
                            shift_gaps(entries, in_domain, "kfold out-of-fold predictions"), {"tiny_source": {"fine_images": 3, "reason": "fewer than 20 fine-labelled images"}},
                            {"n_screened": n, "n_issues": 30, "set_labelled_not_screened": 0})
    record.write(folder)
    write_label_issues(folder, [{"path": p, "source": s, "given": "red", "suggested": "blue", "label_quality": 0.01 * i,
                                 "rank": i + 1} for i, (p, s) in enumerate(zip(paths[:30], sources, strict=False))])
    return folder


def test_crossval_page_renders_decoded_narrow_and_offline(tmp_path: Path) -> None:
    folder = scheme_folder(tmp_path / "crossval" / "source", make_tiny_lake(tmp_path / "lake"))
    page_path = build_crossval_page(folder)
    text = page_path.read_text(encoding="utf-8")
    assert "Shift gap" in text and "Per-class F1 per held-out fold" in text and "tiny_source (3 fine-labelled images: fewer than 20" in text
    page = render(page_path, PROBE, width=1280, height=900)
    p = page.probe
    assert p["gallery"] == 24 and p["undecoded"] == [] and p["without_alt"] == 0  # the top 24 label issues
    assert p["images"] == 25  # and the accuracy plot
    assert p["scroll_width"] <= p["client_width"] == 1280, p["wider"]
    outside = [u[:80] for u in page.requests if u != page_path.resolve().as_uri() and not u.startswith("data:")]
    assert outside == []

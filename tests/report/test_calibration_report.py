"""The report's calibration section (issue #29): ECE before/after, the reliability and
risk–coverage plot, and the accept-or-review verdict of each split, red where the target fails."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from browser import chromium, render
from eval_helpers import SMALL, save_tiny_checkpoint, tiny_model

from sustain.evaluate.gallery import SamplePredictions, predictions_file, save_predictions
from sustain.report.calibration_html import CALIBRATION_PNG, calibration_section
from sustain.training.checkpoints import record_calibration


def store(split: str, n: int, accuracy: float, seed: int, sources: tuple[str, ...] = ("lake_a",)) -> SamplePredictions:
    """Confident predictions (top class 0.97) that are right `accuracy` of the time."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, n)
    wrong = rng.uniform(size=n) > accuracy
    predicted = np.where(wrong, (truth + 2) % 4, truth)  # +2: another bin in SMALL
    probs = np.full((n, 4), 0.01, dtype=np.float32)
    probs[np.arange(n), predicted] = 0.97
    return SamplePredictions(split=split, classes=SMALL.classes, paths=np.array([f"{split}{i}.png" for i in range(n)]),
                             sources=np.array([sources[i % len(sources)] for i in range(n)]),
                             labels=np.array([SMALL.classes[t] for t in truth]), probs=probs,
                             targets=np.eye(4, dtype=bool)[truth])


def test_section_shows_ece_the_plot_and_a_red_verdict_on_the_held_out_split(tmp_path: Path):
    run = tmp_path / "run"
    save_tiny_checkpoint(run, tiny_model(SMALL.num_classes), SMALL)
    record_calibration(run, {"temperature": 0.5, "method": "fitted", "reason": None, "n_images": 400,
                             "accept_accuracy": 0.95, "accept_on": "bin", "accept_threshold": 0.9,
                             "accept_thresholds": {"bin": 0.9, "class": 0.9}})
    for s in (store("val", 400, 1.0, 0), store("test", 400, 0.995, 1),
              store("ood", 300, 0.7, 2, sources=("lake_b", "lake_c"))):
        save_predictions(run / predictions_file(s.split), s)

    page = calibration_section(run)

    assert "T = 0.5" in page and "ECE before" in page and "ECE after" in page
    assert (run / CALIBRATION_PNG).stat().st_size > 10_000 and "data:image/png;base64," in page
    assert "ood · lake_b" in page and "ood · lake_c" in page  # each held-out source on its own row
    assert '<p class="bad">✗ ood: target missed</p>' in page
    assert '<td class="ok">target met (95% lower bound)</td>' in page  # test, 99.5% on 400 images
    assert "<p class=\"bad\">✗ test" not in page


def test_section_without_a_threshold_says_how_to_get_one(tmp_path: Path):
    run = tmp_path / "run"
    save_tiny_checkpoint(run, tiny_model(SMALL.num_classes), SMALL)
    save_predictions(run / predictions_file("test"), store("test", 50, 0.9, 1))
    page = calibration_section(run)
    assert "T = 1" in page and "eval.accept_accuracy" in page


@pytest.mark.slow  # a real browser process
@pytest.mark.skipif(chromium() is None and not os.environ.get("SUSTAIN_REQUIRE_CHROMIUM"),
                    reason="chromium is not installed (apt-get install -y chromium)")
def test_calibration_section_renders_in_chromium_with_the_failure_in_red(tmp_path: Path):
    from test_report import make_run

    from sustain.report.writer import build_report

    run = tmp_path / "run"
    make_run(run)
    save_tiny_checkpoint(run, tiny_model(SMALL.num_classes), SMALL)
    record_calibration(run, {"temperature": 0.5, "method": "fitted", "reason": None, "accept_accuracy": 0.95,
                             "accept_on": "bin", "accept_threshold": 0.9, "accept_thresholds": {"bin": 0.9}})
    save_predictions(run / predictions_file("ood"), store("ood", 300, 0.7, 2))
    page = render(build_report(run), """(() => {
      const plot = [...document.images].find(i => i.alt === 'Reliability and risk–coverage');
      const red = [...document.querySelectorAll('p.bad')].find(p => p.textContent.includes('ood: target missed'));
      return {decoded: !!plot && plot.complete && plot.naturalWidth > 500,
              red: red ? getComputedStyle(red).color : null,
              scroll: document.documentElement.scrollWidth, width: document.documentElement.clientWidth};
    })()""", width=1280, height=900)
    assert page.probe["decoded"] and page.probe["red"] == "rgb(198, 40, 40)"
    assert page.probe["scroll"] <= page.probe["width"]

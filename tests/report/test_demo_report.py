"""The demo shows every section: its planted wrong labels come back as the report's suspect labels.

A real run of the commands a new user types (`sustain data demo`, `train`, `evaluate --split train`,
`report`) on a small demo lake; what is counted is how many of the lake's
`planted_label_noise.csv` rows the report's suspect-labels section and `suspect_labels.csv` name.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import demo_config_dict
from engine_helpers import run_sustain, write_yaml

from sustain.data.demo import MASTER_ROOT, PLANTED_CSV

PER_CLASS = 16  # 480 master images: 2% plants 10 wrong labels
EPOCHS = 15  # a tiny ViT at 32 px reaches ~75% val accuracy: confident enough to contradict a wrong label


@pytest.mark.slow  # trains 15 short epochs and scores the train split (a few minutes on 2 busy cores)
def test_the_demo_report_finds_most_planted_wrong_labels(tmp_path: Path) -> None:
    lake, out = tmp_path / "demo", tmp_path / "run"
    assert run_sustain(["data", "demo", "--out", str(lake), "--per-class", str(PER_CLASS)]).returncode == 0
    raw = demo_config_dict(lake, out)
    raw["model"]["input_size"] = 32
    raw["data"]["num_workers"] = 0
    raw["train"].update(epochs=EPOCHS, lr=3e-3, early_stopping_patience=0)
    raw["tracking"] = {"tensorboard": False}
    for args in (["train", "--config", str(write_yaml(tmp_path / "demo.yaml", raw))],
                 ["evaluate", "--checkpoint", str(out), "--split", "train"],  # screen the train split too
                 ["report", str(out)]):
        done = run_sustain(args, timeout=1200)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    with open(lake / PLANTED_CSV, encoding="utf-8") as fh:
        planted = {row["path"].removeprefix(MASTER_ROOT + "/") for row in csv.DictReader(fh)}  # as the source sees it
    with open(out / "suspect_labels.csv", encoding="utf-8") as fh:
        suspects = {row["path"] for row in csv.DictReader(fh) if row["source"] == "demo_master"}
    found = planted & suspects
    assert len(planted) == 10 and len(found) >= len(planted) // 2, (sorted(planted), sorted(suspects))
    page = (out / "report.html").read_text(encoding="utf-8").replace("<wbr>", "")
    assert "suspect label(s), least probable label first" in page
    assert any(path in page for path in found)  # shown with their thumbnails, named relative to the data root

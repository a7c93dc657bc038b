"""`sustain report`: plots and a self-contained report.html rebuilt from a run folder's artifacts."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sustain.artifacts import DataSummary, History, RunRecord
from sustain.errors import UsageError
from sustain.evaluate import Predictions, write_split_report
from sustain.report.plots import CURVES_FIGSIZE, DPI, confusion_figsize, per_class_figsize
from sustain.report.writer import build_report
from sustain.taxonomy import build_taxonomy

TAXONOMY = build_taxonomy()  # master_30


def _pixels(figsize: tuple[float, float]) -> tuple[int, int]:
    return round(figsize[0] * DPI), round(figsize[1] * DPI)


def make_run(run: Path) -> dict:
    """A finished run's artifacts: history, val/test reports from real predictions, run.json, data summary."""
    rng = np.random.default_rng(0)
    n = 120
    truth = rng.integers(0, 20, n)  # classes 20..29 have no val samples
    logits = rng.normal(size=(n, 30)).astype(np.float32)
    logits[np.arange(n), truth] += np.where(truth < 10, 4.0, 0.5)  # classes 0..9 easy, 10..19 hard
    targets = torch.zeros(n, 30)
    targets[torch.arange(n), torch.from_numpy(truth)] = 1.0
    targets[-5:] = 0
    targets[-5:, list(TAXONOMY.resolve("ORGANIC"))] = 1.0  # a few set-labelled images
    preds = Predictions(torch.from_numpy(logits), targets, torch.from_numpy(rng.integers(0, 2, n)), failed=2)
    val = write_split_report(preds, TAXONOMY, ["demo_master", "demo_coarse"], run, "val",
                             checkpoint={"epoch": 3, "val_acc": 0.5})
    write_split_report(preds, TAXONOMY, ["demo_master", "demo_coarse"], run, "test")
    # Each file through the record the engine and the ingest write it with.
    History(epoch=[1, 2, 3, 4], train_loss=[3.2, 2.1, 1.4, 1.2], train_acc=[0.1, 0.3, 0.5, 0.6],
            val_loss=[3.0, 2.2, 1.9, None],  # a non-finite epoch is written as null
            val_acc=[0.2, 0.4, val["accuracy"], 0.45], val_macro_f1=[0.1, 0.3, 0.5, 0.4],
            val_set_acc=[None] * 4, val_samples=[120] * 4, lr=[1e-3, 8e-4, 4e-4, 1e-4],
            skipped=[0.0, 0.07, 0.0, 0.25], health=["healthy", "warning", "healthy", "critical"],
            epoch_seconds=[10.0, 9.5, 9.7, 9.6], images_per_second=[120.0, 126.0, 124.0, 125.0],
            per_class_f1=[[0.5] * 30] * 4).write(run)
    summary = DataSummary(total_images=1234, manifest_hash="abc123", seed=42,
                          split_fractions={"train": 0.8, "val": 0.1, "test": 0.1},
                          splits={"train": 988, "val": 123, "test": 123},
                          sources={"<script>alert(1)</script>": {"images": 5}}, classes={})
    summary.write(run)
    RunRecord(status="completed", stop_reason=None, config={"model": {"name": "test_vit"}, "seed": 42},
              model_name="test_vit", classes=list(TAXONOMY.classes), taxonomy=TAXONOMY.to_dict(),
              normalisation={}, device={"type": "cpu"}, seed=42, timings={"total_seconds": 40.0},
              versions={"torch": torch.__version__}, manifest_hash="abc123", data_summary=summary.to_dict(),
              epochs_completed=4, best={"epoch": 3, "val_acc": val["accuracy"]},
              health={"totals": {"nonfinite_loss": 3, "nonfinite_grad": 0, "data_errors": 2},
                      "trend_warnings": [{"id": "overfit", "message": "val loss rising while train loss falls"}]},
              checklist=[{"id": "loss", "item": "Loss decreased", "passed": True, "detail": "3.2 → 1.2"}],
              local_paths={"run_dir": str(run), "data_root": str(run.parent), "sources": {}}).write(run)
    return val


def test_report_files_are_complete_and_self_contained(tmp_path: Path, run_cli):
    run = tmp_path / "run"
    val = make_run(run)

    result = run_cli("report", run)
    assert result.code == 0, result.output

    for name, figsize in (("training_curves.png", CURVES_FIGSIZE), ("confusion_matrix.png", confusion_figsize(30)),
                          ("per_class_f1.png", per_class_figsize(30))):
        with Image.open(run / name) as im:
            assert im.size == _pixels(figsize), name
            assert len(np.unique(np.asarray(im.convert("L")))) > 20  # a real plot, not a blank canvas
    assert _pixels(confusion_figsize(30))[0] >= 1400  # 30 legible labels need room

    page = (run / "report.html").read_text(encoding="utf-8")
    inlined = dict(re.findall(r'alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page))
    assert len(inlined) == 3
    assert base64.b64decode(inlined["Confusion matrix (val)"]) == (run / "confusion_matrix.png").read_bytes()
    page = re.sub(r'<wbr>| data-label="[^"]*"', "", page)  # word-boundary breaks and phone labels aside
    assert "src=\"http" not in page and "<script" not in page  # nothing external, data is escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page

    worst = [w["class"] for w in val["worst_classes"]]
    assert len(worst) == 5 and all(f"<td>{name}</td>" in page for name in worst)
    assert all(c in page for c in TAXONOMY.classes[20:])  # the classes without val samples are named
    assert "10 class(es) have no val samples" in page
    cm = np.load(run / "confusion_matrix.npy")
    np.fill_diagonal(cm, 0)
    t, p = np.unravel_index(cm.argmax(), cm.shape)
    assert f'title="{TAXONOMY.classes[t]} → {TAXONOMY.classes[p]}: {cm[t, p]} image(s)' in page  # the top pair
    assert "Look first at the trend warning: val loss rising while train loss falls." in page
    for text in ("demo_master", "demo_coarse", "compost", "donate", "Loss decreased", "critical", "abc123",
                 "✓ matches the best epoch", "nonfinite_loss", "val loss rising while train loss falls",
                 "Checklist: 1 of 1 criteria met ✓"):
        assert text in page, text


def test_report_tolerates_missing_optional_artifacts(tmp_path: Path):
    run = tmp_path / "run"
    make_run(run)
    for name in ("run.json", "data_summary.json", "test_classification_report.json", "test_confusion_matrix.npy"):
        (run / name).unlink()

    page = build_report(run).read_text(encoding="utf-8")

    assert "run.json not found (the run may still be in progress)" in page
    assert "data_summary.json not found" in page
    assert page.count("data:image/png;base64,") == 3

    # a run in progress: only the history so far
    early = tmp_path / "early"
    early.mkdir()
    (early / "metrics_history.json").write_text(json.dumps({"epoch": [1], "train_loss": [2.0], "val_acc": [0.3]}))
    page = build_report(early).read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 1 and "classification_report.json not found" in page


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path: Path):
    with pytest.raises(UsageError, match="not found"):
        build_report(tmp_path / "nope")
    with pytest.raises(UsageError, match="No run artifacts"):
        build_report(tmp_path)


# --------------------------------------------------------------------------- the error gallery


def test_report_rebuilds_the_error_gallery_from_the_stores_alone(tmp_path: Path, run_cli):
    from gallery_helpers import add_gallery

    from sustain.evaluate.gallery import top_mistakes

    run = tmp_path / "run"
    make_run(run)
    stores = add_gallery(run)
    assert not list(run.glob("*.safetensors")) and not list(run.glob("*.pth"))  # no model to run

    result = run_cli("report", run)
    assert result.code == 0, result.output

    page = (run / "report.html").read_text(encoding="utf-8")
    assert (run / "report.html").stat().st_size <= 5_000_000
    assert str(tmp_path) not in page  # portable: photos named relative to the data root (run.json local_paths)
    page = page.replace("<wbr>", "")
    assert re.search(r"https?://|src=\"file:|<script|<link", page) is None
    tags = re.findall(r"<img [^>]*>", page)
    thumbs = [t for t in tags if 'src="data:image/jpeg;base64,' in t]
    assert len(thumbs) >= 48 and all(re.search(r'alt="[^"]{10,}"', t) for t in tags)
    for split in ("val", "test"):
        first = top_mistakes(stores[split])[0]
        assert f"Top mistakes ({split})" in page and Path(first.path).relative_to(tmp_path).as_posix() in page
        assert f"predicted <b class=\"sg-bad\">{first.predicted}</b>" in page
    assert "Most-confused pairs (val)" in page and "Per-source view" in page
    pairs = page[page.index("Most-confused pairs (val)"):page.index("Top mistakes and confused pairs (test)")]
    examples = re.findall(r'<td class="sg-example">.*?title="([^"]+)"', pairs)
    mistakes = {Path(s.path).relative_to(tmp_path).as_posix() for s in top_mistakes(stores["val"])}
    assert re.search(r'<td class="num" data-label="images">\d+</td>', pairs)  # each pair with its count
    shown_already = pairs.count("its examples are under top mistakes")
    assert len(examples) + shown_already == pairs.count("<tr>") - 1  # one example (or a pointer) per pair
    assert not set(examples) & mistakes  # never the top mistakes again
    assert "The train split is not screened" in page

    rows = (run / "suspect_labels.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("rank,split,scores,path,source,given_label,predicted_label")
    flagged = {r.split(",")[3] for r in rows[1:]}
    for split in ("val", "test"):  # the three mislabelled images of each split are caught, named portably
        assert {Path(stores[split].paths[i]).relative_to(tmp_path).as_posix() for i in range(3)} <= flagged


def test_a_photo_gone_since_the_run_is_named_not_replaced(tmp_path: Path):
    from gallery_helpers import add_gallery

    from sustain.evaluate.gallery import top_mistakes
    from sustain.report.gallery_html import build_gallery

    run = tmp_path / "run"
    run.mkdir()
    stores = add_gallery(run)
    gone = top_mistakes(stores["val"])[0].path
    Path(gone).unlink()

    page = build_gallery(run).html
    assert "image(s) could not be read for a thumbnail" in page and f"e.g. …/val/{Path(gone).name}" in page
    assert str(tmp_path) not in page  # no run.json to say the data root: the file's last parts only
    tile = page[page.index('<figure class="sg-tile">'):page.index("</figure>")]
    assert "image not readable" in tile and "<img" not in tile


# --------------------------------------------------------------------------- what a reader sees


def test_lr_plot_draws_every_epoch_and_a_plot_with_nothing_to_show_says_so():
    from sustain.report.plots import training_curves_figure

    history = {"epoch": [1, 2, 3], "train_loss": [2.0, 1.0, 0.5], "lr": [1e-3, 5e-4, 0.0], "skipped": [0.0, 0.0, 0.0]}
    fig = training_curves_figure(history)
    lr_axis, skipped_axis = fig.axes[3], fig.axes[4]
    assert lr_axis.get_yscale() == "linear" and list(lr_axis.lines[0].get_ydata()) == [1e-3, 5e-4, 0.0]
    assert any(t.get_text() == "0" for t in lr_axis.texts)  # the zero LR of the last epoch is marked
    assert not skipped_axis.axison and [t.get_text() for t in skipped_axis.texts] == ["No steps skipped\n(all 3 epoch(s))"]
    fig = training_curves_figure({**history, "skipped": [0.0, 0.1, 0.0], "health": ["healthy", "warning", "healthy"]})
    assert fig.axes[4].axison and len(fig.axes[4].patches) == 3  # bars when a step was skipped


def test_the_page_opens_with_five_lines_and_the_data_summary_is_tables(tmp_path: Path):
    run = tmp_path / "run"
    make_run(run)
    page = build_report(run).read_text(encoding="utf-8")
    glance = re.search(r'<ul class="glance">(.*?)</ul>', page).group(1)
    lines = re.findall(r"<li>(.*?)</li>", glance.replace("<wbr>", ""))
    assert page.index('class="glance"') < page.index("<h2>")  # first, before any section
    assert lines[0] == "Checklist: 1 of 1 criteria met ✓" and lines[1].startswith("Test accuracy ")
    assert lines[2].startswith("Weakest class: ") and len(lines) <= 5
    data = page[page.index("<h2>Data summary</h2>"):]
    assert "<h3>Per source</h3><table" in data and "<th>images</th>" in data
    assert "<details><summary>data_summary.json (raw)</summary><pre>" in data  # the raw JSON one click away
    assert '"split_fractions"' not in page.split("<details>")[0]  # and never printed open


def test_weakest_source_and_what_to_look_at_first():
    from sustain.report.glance import glance_lines

    test = {"accuracy": 0.9, "n_fine": 100, "macro_f1": 0.88, "glass": {"f1-score": 0.5, "support": 10},
            "paper": {"f1-score": 0.95, "support": 90},
            "per_source_accuracy": {"a": {"acc": 0.95, "n_fine": 80}, "b": {"acc": 0.7, "n_fine": 20},
                                    "tiny": {"acc": 0.0, "n_fine": 2}}}
    run = {"status": "completed", "checklist": [{"item": "Macro-F1 > 0.6", "passed": True},
                                                {"item": "Loss decreased", "passed": False}]}
    lines = glance_lines(run, {"test": test}, ["glass", "paper"], n_suspects=3, top_pair=("glass", "paper", 4))
    assert lines == ["Checklist: 1 of 2 criteria met; not met: Loss decreased",
                     "Test accuracy 90.0% on 100 images (95% interval 82.6% to 94.5%), macro-F1 0.880",
                     "Weakest class: glass (F1 0.50 on 10 image(s))",
                     "Weakest source: b (70.0% on 20 images)",  # a 2-image source says little: not named
                     "Look first at the 3 suspect label(s) (Suspect labels, suspect_labels.csv): "
                     "wrong labels cap every metric."]
    assert glance_lines(run, {"test": test}, ["glass", "paper"], 0, ("glass", "paper", 4))[-1] == \
        "Look first at glass predicted as paper (4 image(s), Most-confused pairs)."


def test_shared_text_names_files_by_their_root_and_never_the_machines_folders(tmp_path: Path):
    from sustain.report.paths import PathView

    view = PathView(tmp_path / "run", str(tmp_path / "lake"), {"master": str(tmp_path / "lake" / "m")})
    assert view.show(tmp_path / "lake" / "m" / "glass" / "a.jpg") == "m/glass/a.jpg"  # relative to the data root
    assert view.in_source(str(tmp_path / "lake" / "m" / "glass" / "a.jpg"), "master") == "glass/a.jpg"  # as exclude
    assert view.show(tmp_path / "run" / "best_model.safetensors") == "best_model.safetensors"
    text = view.text(f"cache {tmp_path}/cache/decode.sqlite; store sqlite:///{tmp_path}/mlflow.db; https://mlflow.example/x")
    assert str(tmp_path) not in text and "https://mlflow.example/x" in text and "…/cache/decode.sqlite" in text


def test_plots_fit_their_labels_and_are_laid_out_once(tmp_path: Path, monkeypatch):
    """30 long class names stay inside the confusion matrix's PNG, and saving it lays the figure out
    once: `Figure.tight_layout` left an engine behind that made savefig lay out every label again."""
    from matplotlib.figure import Figure

    from sustain.report.plots import plot_confusion_matrix

    classes = [f"{name}_MULTILAYER_BEVERAGE_CARTON_WITH_LID" for name in "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123"]
    confusion = np.random.default_rng(0).integers(0, 20, (30, 30))
    figures: list[Figure] = []
    draws = 0
    real_draw = Figure.draw

    def counting_draw(self, renderer):
        nonlocal draws
        draws += 1
        figures.append(self)
        return real_draw(self, renderer)

    monkeypatch.setattr(Figure, "draw", counting_draw)
    path = plot_confusion_matrix(confusion, classes, tmp_path / "cm.png")
    assert draws == 1  # one layout and drawing of every label, not two
    fig = figures[0]
    assert fig.get_layout_engine() is None
    width, height = Image.open(path).size
    ax = fig.axes[0]
    for label in ax.get_xticklabels() + ax.get_yticklabels():
        box = label.get_window_extent()  # in the saved PNG's pixels (same DPI)
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, label.get_text()

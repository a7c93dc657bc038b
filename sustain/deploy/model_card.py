"""The exported model folder (``export/model/``): weights and config.json through timm's own
`save_for_hf`, and the model card (README.md), a pure function of the checkpoint's metadata and
the run's artifacts (``run.json``, ``data_summary.json``, ``test_classification_report.json``).

A missing artifact leaves its section saying so; nothing is invented.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..artifacts import DATA_SUMMARY, RUN, TEST_REPORT, VAL_REPORT
from ..utils import atomic_write_text
from .loading import LoadedCheckpoint

log = logging.getLogger("sustain.deploy.export")

WORST_SHOWN = 5


def write_model_folder(loaded: LoadedCheckpoint, run_dir: Path, out: Path) -> Path:
    """``model.safetensors`` + ``config.json`` (timm's `save_for_hf`) + ``README.md`` (the model card)."""
    from timm.models import save_for_hf

    out.mkdir(parents=True, exist_ok=True)
    save_for_hf(loaded.model, str(out), model_config={"label_names": list(loaded.taxonomy.classes)},
                model_args=dict(loaded.meta.get("model_kwargs") or {}), safe_serialization=True,
                data_config=dict(loaded.data_config))
    atomic_write_text(out / "README.md", build_model_card(loaded.meta, _artifacts(run_dir)))
    return out


def _artifacts(run_dir: Path) -> dict[str, Any]:
    """The run's JSON artifacts the model card reads; a missing or unreadable one is None."""
    names = {"run": RUN, "data_summary": DATA_SUMMARY, "test_report": TEST_REPORT, "val_report": VAL_REPORT}
    found: dict[str, Any] = {}
    for key, name in names.items():
        try:
            found[key] = json.loads((run_dir / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            found[key] = None
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("⚠️  %s not used for the model card: %s", run_dir / name, exc)
            found[key] = None
    return found


def build_model_card(meta: Mapping[str, Any], artifacts: Mapping[str, Any]) -> str:
    """Markdown with a Hugging Face front matter; ``artifacts`` maps run/data_summary/test_report/
    val_report to parsed JSON or None."""
    report = artifacts.get("test_report") or artifacts.get("val_report")
    sections = [
        _front_matter(meta),
        f"# Sustain waste classifier: {meta['model_name']}\n",
        _intended_use(meta),
        _classes(meta),
        _data(artifacts.get("data_summary")),
        _metrics(report),
        _failure_modes(report),
        _environment(artifacts.get("run"), meta),
        _usage(meta),
    ]
    return "\n".join(sections)


def _front_matter(meta: Mapping[str, Any]) -> str:
    return ("---\nlibrary_name: timm\npipeline_tag: image-classification\ntags:\n- image-classification\n"
            f"- timm\n- waste-sorting\n- sustain\nbase_model_architecture: {meta['model_name']}\n---\n")


def _intended_use(meta: Mapping[str, Any]) -> str:
    size = meta["input_size"][-1]
    return ("## Intended use\n\n"
            "Sorting one photographed waste item into one of the classes below and its disposal bin, "
            "on a sorting line, in an app or behind a service. It is trained on the sources listed here; "
            "photos unlike them (several items, other lighting, other local rules on bins) need their own "
            "test before use. It does not know what is *not* waste: every photo gets some class.\n\n"
            f"Input: an RGB image resized (interpolation `{meta.get('interpolation', 'bicubic')}`, crop_pct "
            f"{meta.get('crop_pct', 1.0)}) and center-cropped to {size}×{size}, normalised with mean "
            f"{list(meta['mean'])} and std {list(meta['std'])}.\n")


def _classes(meta: Mapping[str, Any]) -> str:
    bins = meta.get("bins") or {}
    bin_of = {c: b for b, members in bins.items() for c in members}
    lines = ["## Classes and bins\n", "| # | class | bin |", "|---|---|---|"]
    lines += [f"| {i} | {c} | {bin_of.get(c, '-')} |" for i, c in enumerate(meta["classes"])]
    sets = meta.get("sets") or {}
    if sets:
        lines += ["", "Set labels used in training (a sample known only to be one of several classes): "
                  + "; ".join(f"`{name}` = {', '.join(members)}" for name, members in sets.items())]
    return "\n".join(lines) + "\n"


def _data(summary: Mapping[str, Any] | None) -> str:
    if not summary:
        return "## Training data\n\nNot recorded (no `data_summary.json` in the run folder).\n"
    lines = ["## Training data\n",
             f"{summary.get('total_images', 0):,} images after cleaning; manifest hash `{summary.get('manifest_hash')}`; "
             f"splits {_splits(summary.get('splits') or {})}.\n",
             "| source | images | train / val / test | corrupt | duplicates merged |", "|---|---|---|---|---|"]
    for name, s in (summary.get("sources") or {}).items():
        lines.append(f"| {name} | {s.get('images', 0):,} | {_splits(s.get('splits') or {})} | "
                     f"{s.get('corrupt', 0)} | {s.get('duplicates_merged', 0)} |")
    dup = summary.get("duplicates") or {}
    lines += ["", f"Duplicates removed: {dup.get('exact_merged', 0):,} exact copies merged, "
                  f"{dup.get('conflicting_dropped', 0):,} copies with conflicting labels dropped; "
                  f"{dup.get('near_duplicate_groups', 0):,} near-duplicate groups kept within one split."]
    return "\n".join(lines) + "\n"


def _splits(splits: Mapping[str, Any]) -> str:
    return " / ".join(f"{splits.get(s, 0):,}" for s in ("train", "val", "test"))


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.2f}%"


def _metrics(report: Mapping[str, Any] | None) -> str:
    if not report:
        return "## Evaluation\n\nNot recorded (no classification report in the run folder).\n"
    classes = report.get("classes") or []
    bin_acc = (report.get("bin_accuracy") or {}).get("acc")
    lines = [f"## Evaluation ({report.get('split', '?')} split, {report.get('n_samples', 0):,} images)\n",
             f"- accuracy: {_pct(report.get('accuracy'))}; macro-F1: {_pct(report.get('macro_f1'))}; "
             f"top-5 accuracy: {_pct(report.get('top5_accuracy'))}; bin accuracy: {_pct(bin_acc)}",
             f"- calibration: expected calibration error {_num(report.get('expected_calibration_error'))} "
             "(0 = confidences match accuracy)", "",
             "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c in classes:
        r = report.get(c) or {}
        lines.append(f"| {c} | {_num(r.get('precision'))} | {_num(r.get('recall'))} | {_num(r.get('f1-score'))} "
                     f"| {int(r.get('support') or 0)} |")
    per_source = report.get("per_source_accuracy") or {}
    if per_source:
        lines += ["", "| source | accuracy | images |", "|---|---|---|"]
        for name, s in per_source.items():
            acc, n = (s.get("acc"), s.get("n_fine")) if isinstance(s, Mapping) else (s, None)
            lines.append(f"| {name} | {_pct(acc)} | {n if n is not None else '-'} |")
    return "\n".join(lines) + "\n"


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):.3f}"


def _failure_modes(report: Mapping[str, Any] | None) -> str:
    worst = (report or {}).get("worst_classes") or []
    if not worst:
        return "## Known failure modes\n\nNot recorded.\n"
    lines = ["## Known failure modes\n", "The classes this model gets wrong most often (lowest F1 on the held-out split):\n"]
    lines += [f"- `{w['class']}`: F1 {_num(w.get('f1'))} over {w.get('support', 0)} images" for w in worst[:WORST_SHOWN]]
    return "\n".join(lines) + "\n"


def _environment(run: Mapping[str, Any] | None, meta: Mapping[str, Any]) -> str:
    lines = ["## Training run\n", f"- best epoch {meta.get('epoch')}, validation accuracy {_pct(meta.get('val_acc'))}"]
    if run:
        device = run.get("device") or {}
        versions = ", ".join(f"{k} {v}" for k, v in (run.get("versions") or {}).items())
        lines += [f"- device: {device.get('type', '?')} ({device.get('name', '?')}), precision {device.get('precision', '?')}",
                  f"- versions: {versions}", f"- epochs completed: {run.get('epochs_completed')}, seed {run.get('seed')}"]
    return "\n".join(lines) + "\n"


def _usage(meta: Mapping[str, Any]) -> str:
    return (
        "## Use\n\n```python\nimport timm, torch\n"
        'model = timm.create_model("local-dir:path/to/model", pretrained=True).eval()\n'
        "cfg = timm.data.resolve_model_data_config(model)\n"
        "transform = timm.data.create_transform(**cfg, is_training=False)\n"
        "labels = model.pretrained_cfg['label_names']\n```\n\n"
        "`../model.onnx` is the same model for ONNX Runtime (uint8 RGB input, normalisation inside).\n\n"
        "## Publish (only when you decide to)\n\nSustain never uploads anything. To share this folder on the "
        "Hugging Face Hub, log in (`hf auth login`) and run:\n\n```python\nfrom huggingface_hub import upload_folder\n"
        'upload_folder(repo_id="you/sustain-waste-classifier", folder_path="path/to/model")\n```\n'
    )

"""The exported model folder (``export/model/``): weights and config.json through timm's own
`save_for_hf`, and the model card (README.md), a pure function of the checkpoint's metadata and
the run's artifacts (``run.json``, ``data_summary.json``, ``test_classification_report.json``,
``ood_classification_report.json`` when sources were held out).

A missing artifact leaves its section saying so; nothing is invented.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..artifacts import DATA_SUMMARY, OOD_REPORT, RUN, TEST_REPORT, VAL_REPORT
from ..evaluate import shift_rows
from ..utils import atomic_write_json, atomic_write_text
from .loading import LoadedCheckpoint

log = logging.getLogger("sustain.deploy.export")

WORST_SHOWN = 5
# pretrained_cfg keys that describe the timm hub weights, not these: dropped unless training started from them.
HUB_KEYS = ("tag", "license", "hf_hub_id", "hf_hub_filename", "url", "origin_url", "paper_ids", "paper_name", "notes")


def calibration_config(meta: Mapping[str, Any]) -> dict[str, Any]:
    """T and the accept threshold, as the export's configs (config.json, the ONNX metadata) carry them."""
    return {"temperature": float(meta.get("temperature") or 1.0),
            **{k: meta.get(k) for k in ("accept_accuracy", "accept_on", "accept_threshold")}}


def write_model_folder(loaded: LoadedCheckpoint, run_dir: Path, out: Path) -> Path:
    """``model.safetensors`` + ``config.json`` (timm's `save_for_hf`) + ``README.md`` (the model card)."""
    from timm.models import save_for_hf

    out.mkdir(parents=True, exist_ok=True)
    artifacts = _artifacts(run_dir)
    save_for_hf(loaded.model, str(out), model_config={"label_names": list(loaded.taxonomy.classes),
                                                      **calibration_config(loaded.meta)},
                model_args=accepted_args(loaded.model, loaded.meta.get("model_kwargs") or {}),
                safe_serialization=True, data_config=dict(loaded.data_config))
    origin = weights_origin(_pretrained_setting(artifacts.get("run")), loaded.model.pretrained_cfg)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    atomic_write_json(out / "config.json", with_origin(config, origin))
    atomic_write_text(out / "README.md", build_model_card({**loaded.meta, "weights": origin}, artifacts))
    return out


def accepted_args(model: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments ``model``'s class takes (a ResNet has no ``img_size``), so
    ``timm.create_model("local-dir:…")`` can rebuild it from config.json's ``model_args``."""
    params = inspect.signature(type(model).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}


def _pretrained_setting(run: Mapping[str, Any] | None) -> Any:
    """``model.pretrained`` of the run's config (run.json), or None when not recorded."""
    return (((run or {}).get("config") or {}).get("model") or {}).get("pretrained")


def weights_origin(pretrained: Any, pretrained_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Where training started: timm's pretrained weights (tag, licence), a local file, or random init."""
    if pretrained is True:
        return {"origin": "pretrained", "architecture": pretrained_cfg.get("architecture"),
                "tag": pretrained_cfg.get("tag"), "license": pretrained_cfg.get("license")}
    if pretrained is False:
        return {"origin": "scratch"}
    if isinstance(pretrained, str):
        return {"origin": "file", "file": Path(pretrained).name}
    return {"origin": "not recorded"}


def with_origin(config: dict[str, Any], origin: Mapping[str, Any]) -> dict[str, Any]:
    """config.json stating the weights' origin; the hub weights' tag and licence only when training began from them."""
    cfg = dict(config.get("pretrained_cfg") or {})
    if origin["origin"] != "pretrained":
        for key in HUB_KEYS:
            cfg.pop(key, None)
    return {**config, "pretrained_cfg": cfg, "sustain_weights": dict(origin)}


def _artifacts(run_dir: Path) -> dict[str, Any]:
    """The run's JSON artifacts the model card reads; a missing or unreadable one is None."""
    names = {"run": RUN, "data_summary": DATA_SUMMARY, "test_report": TEST_REPORT, "val_report": VAL_REPORT,
             "ood_report": OOD_REPORT}
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
        _origin(meta.get("weights") or {"origin": "not recorded"}),
        _classes(meta),
        _data(artifacts.get("data_summary")),
        _metrics(report),
        _calibration(meta, report),
        _held_out(artifacts.get("test_report"), artifacts.get("ood_report")),
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


def _origin(origin: Mapping[str, Any]) -> str:
    kind = origin["origin"]
    if kind == "pretrained":
        text = (f"Fine-tuned from timm's pretrained `{origin.get('architecture')}.{origin.get('tag')}` "
                f"(licence `{origin.get('license')}`: it applies to those weights and to what derives from them).")
    elif kind == "scratch":
        text = "Trained from scratch (random initialisation): no pretrained weights, no inherited licence."
    elif kind == "file":
        text = f"Fine-tuned from the local weights file `{origin.get('file')}`; its origin and licence are the user's to state."
    else:
        text = "Not recorded (no `run.json` beside the checkpoint): the origin and licence of the weights are unknown."
    return f"## Weights\n\n{text}\n"


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
    text = " / ".join(f"{splits.get(s, 0):,}" for s in ("train", "val", "test"))
    return text + (f" (+ {splits['ood']:,} held out)" if splits.get("ood") else "")


def _held_out(test: Mapping[str, Any] | None, ood: Mapping[str, Any] | None) -> str:
    """In-domain test beside each source the model never trained on (data.split.holdout_sources)."""
    rows = shift_rows(test, ood)
    if not rows:
        return ""
    lines = ["## In-domain test and held-out sources\n",
             "The held-out sources were never trained on (their near duplicates were removed from the other "
             "sources): expect their accuracy, not the in-domain one, at a new site that looks like them.\n",
             "| population | fine images | accuracy | 95% interval (Wilson) | gap to in-domain test "
             "| set images | set accuracy (95% interval) |", "|---|---|---|---|---|---|---|"]

    def interval(bounds: tuple[float, float] | None) -> str:
        return "n/a" if bounds is None else f"{_pct(bounds[0])} – {_pct(bounds[1])}"

    for r in rows:
        gap = "" if r.gap is None else f"{100 * r.gap:+.1f} points"
        set_acc = f"{_pct(r.set_accuracy)} ({interval(r.set_interval)})" if r.n_set else ""
        lines.append(f"| {r.name}{' (held out)' if r.held_out else ''} | {r.n_fine:,} | {_pct(r.accuracy)} | "
                     f"{interval(r.interval)} | {gap} | {r.n_set:,} | {set_acc} |")
    return "\n".join(lines) + "\n"


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.2f}%"


def _metrics(report: Mapping[str, Any] | None) -> str:
    if not report:
        return "## Evaluation\n\nNot recorded (no classification report in the run folder).\n"
    classes = report.get("classes") or []
    bin_acc = (report.get("bin_accuracy") or {}).get("acc")
    lines = [f"## Evaluation ({report.get('split', '?')} split)\n", _counts(report),
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
        lines += [_source_row(name, s) for name, s in per_source.items()]
    return "\n".join(lines) + "\n"


def _calibration(meta: Mapping[str, Any], report: Mapping[str, Any] | None) -> str:
    t = float(meta.get("temperature") or 1.0)
    how = (meta.get("calibration") or {}).get("reason") or "fitted on the validation split"
    lines = ["## Confidence and accept-or-review\n",
             f"- temperature T = {t:.4g} ({how}): probabilities are softmax(logits / T); "
             f"ECE {_num((report or {}).get('expected_calibration_error_uncalibrated'))} before, "
             f"{_num((report or {}).get('expected_calibration_error'))} after"]
    if meta.get("accept_accuracy") is None:
        lines.append("- no accept threshold (train with `eval.accept_accuracy` to get one)")
        return "\n".join(lines) + "\n"
    threshold, on = meta.get("accept_threshold"), meta.get("accept_on")
    lines.append(f"- accept when the {on} probability ≥ {threshold:.4f}, chosen on validation so that the lower "
                 f"95% bound of the accepted accuracy is ≥ {_pct(meta['accept_accuracy'])}; the rest go to review"
                 if threshold is not None else
                 f"- no threshold backs {_pct(meta['accept_accuracy'])} on the validation split: every prediction "
                 "says review")
    a = ((report or {}).get("accept_or_review") or {}).get(on or "")
    if a and a.get("accepted_accuracy") is not None:
        lo, hi = a["interval"]
        lines.append(f"- on the {report.get('split')} split: {_pct(a['coverage'])} accepted at "
                     f"{_pct(a['accepted_accuracy'])} (95% interval {_pct(lo)}–{_pct(hi)}), {a['review']} of "
                     f"{a['n']} to review: {a['status']}")
    return "\n".join(lines) + "\n"


def _counts(report: Mapping[str, Any]) -> str:
    """How many images the metrics below cover, so the card's counts match them."""
    n_fine, n_set = report.get("n_fine"), report.get("n_set") or 0
    failed = int(report.get("failed") or 0)
    if n_fine is None:
        return f"- {report.get('n_samples', 0):,} images scored"
    text = f"- accuracy, F1 and the tables cover the {n_fine:,} images with one class"
    if n_set:
        text += f"; the {n_set:,} images with a set label count in the set accuracy only ({_pct(report.get('set_accuracy'))})"
    if failed:
        text += f"; {failed:,} unreadable images were not scored"
    return text


def _source_row(name: str, s: Any) -> str:
    if not isinstance(s, Mapping):
        return f"| {name} | {_pct(s)} | - |"
    if s.get("acc") is None:
        why = ("only set-labelled images here: set accuracy " + _pct(s.get("set_acc"))) if s.get("n_set") \
            else "no images from this source in this split"
        return f"| {name} | n/a ({why}) | {s.get('n_fine', 0)} |"
    return f"| {name} | {_pct(s['acc'])} | {s.get('n_fine')} |"


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
                  *([f"- precision plan: {device['precision_plan']['reason']}"]
                    if (device.get("precision_plan") or {}).get("reason") else []),
                  f"- versions: {versions}", f"- epochs completed: {run.get('epochs_completed')}, seed {run.get('seed')}"]
    return "\n".join(lines) + "\n"


def _usage(meta: Mapping[str, Any]) -> str:
    return (
        "## Use\n\n```python\nimport timm, torch\n"
        'model = timm.create_model("local-dir:path/to/model", pretrained=True).eval()\n'
        "cfg = timm.data.resolve_model_data_config(model)\n"
        "transform = timm.data.create_transform(**cfg, is_training=False)\n"
        "labels = model.pretrained_cfg['label_names']\n```\n\n"
        "With a new head (another class list), pass only `num_classes`: timm reads the saved head size "
        "from config.json, loads every other weight and re-initialises the head (`label_names` then "
        "still lists the old classes). Do not also put `num_classes` in `pretrained_cfg_overlay`: "
        "timm would then try to load the old head into the new one and fail.\n\n```python\n"
        'model = timm.create_model("local-dir:path/to/model", pretrained=True, num_classes=10)\n```\n\n'
        "`../model.onnx` is the same model for ONNX Runtime (uint8 RGB input, normalisation inside).\n\n"
        "## Publish (only when you decide to)\n\nSustain never uploads anything. To share this folder on the "
        "Hugging Face Hub, log in (`hf auth login`) and run:\n\n```python\nfrom huggingface_hub import upload_folder\n"
        'upload_folder(repo_id="you/sustain-waste-classifier", folder_path="path/to/model")\n```\n'
    )

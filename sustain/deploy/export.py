"""`sustain export`: a trained run as ONNX (and int8 ONNX) plus a timm model folder, behind a parity gate.

    sustain export checkpoints/demo --format onnx --quantize int8

writes into ``RUN_DIR/export/`` (or ``--out``):
- ``model.onnx``: the dynamo exporter (``torch.onnx.export(dynamo=True)``), a dynamic
  batch axis, input ``image`` uint8 RGB [N, 3, S, S] (resized and center-cropped as in
  evaluation), normalisation inside the graph, output ``logits``; the classes, bins,
  preprocessing, model name, Sustain version, manifest hash and opset as metadata_props;
- ``model_int8.onnx`` with ``--quantize int8``: ONNX Runtime's dynamic quantisation;
- ``model/``: ``model.safetensors`` + ``config.json`` (timm's own `save_for_hf`, so
  ``timm.create_model("local-dir:…", pretrained=True)`` opens it) + a ``README.md`` model card;
- ``export_report.json``: the parity gate.

The gate scores the run's held-out split (``--split test|val``, rows from its
``manifest.csv``) with PyTorch and with each exported file through the same decode,
resize and crop (`sustain.deploy.inference.split_eval_transform`), and fails the export
(exit 1, `RunFailed`) when the exported model answers differently (`GATES`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..artifacts import EXPORT_REPORT, MANIFEST, RUN
from ..data import CorruptImage, load_rgb
from ..errors import RunFailed, UsageError
from ..evaluate import epoch_metrics, read_manifest_split
from ..taxonomy import Taxonomy
from ..utils import atomic_write, atomic_write_json
from .export_files import clear_previous, mark_rejected
from .inference import OnnxBackend, Predictor
from .loading import LoadedCheckpoint, load_checkpoint_model
from .model_card import calibration_config, write_model_folder

log = logging.getLogger("sustain.deploy.export")

FORMATS = ("onnx", "coreml")
OPSET = 18
# Fewer samples than this: every single answer must agree (0.1% of them is less than one image).
SMALL_SPLIT = 1000


@dataclass(frozen=True)
class Gate:
    """Pass marks of the parity gate: agreements as fractions, |Δ macro-F1| in points."""

    top1: float
    bins: float
    f1_points: float
    all_on_small_splits: bool

    def top1_for(self, n: int) -> float:
        return 1.0 if self.all_on_small_splits and n < SMALL_SPLIT else self.top1


GATES = {"fp32": Gate(0.999, 0.999, 0.1, True), "int8": Gate(0.99, 0.99, 0.5, False)}


# --------------------------------------------------------------------------- the ONNX graph


class PixelModel(nn.Module):
    """uint8 RGB [N, 3, S, S] in, logits out: torchvision's ToTensor + Normalize, then the model."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model((image.float() / 255.0 - self.mean) / self.std)


def sustain_version() -> str:
    """The installed package's version (`sustain.__version__` sits in the top layer)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sustain")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "unknown"


def onnx_metadata(meta: dict[str, Any], precision: str, opset: int) -> dict[str, Any]:
    """What a deployment needs besides the graph; values are JSON-encoded into metadata_props."""
    keep = ("model_name", "classes", "bins", "sets", "input_size", "mean", "std", "interpolation",
            "crop_pct", "crop_mode", "manifest_hash", "epoch", "val_acc")
    return {**{k: meta.get(k) for k in keep}, "crop_mode": meta.get("crop_mode", "center"),
            **calibration_config(meta),
            "input": "image: uint8 RGB [N, 3, S, S], resized and center-cropped; normalised inside",
            "output": "logits [N, num_classes]; softmax(logits / temperature) gives calibrated probabilities",
            "precision": precision, "opset": opset, "sustain_version": sustain_version()}


def _write_onnx(proto: Any, path: Path, metadata: dict[str, Any]) -> Path:
    import onnx

    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {k: json.dumps(v) for k, v in metadata.items()})
    return atomic_write(path, lambda fh: fh.write(proto.SerializeToString()))


def export_onnx(model: nn.Module, meta: dict[str, Any], path: Path, opset: int = OPSET) -> Path:
    """``model`` as ONNX at ``path``: uint8 pixels in, logits out, batch axis dynamic."""
    wrapper = PixelModel(model, tuple(meta["mean"]), tuple(meta["std"])).eval()
    size = int(meta["input_size"][-1])
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)  # batch 2: a batch of 1 would be specialised
    try:
        program = torch.onnx.export(wrapper, (example,), dynamo=True, opset_version=opset, verbose=False,
                                    input_names=["image"], output_names=["logits"],
                                    dynamic_shapes={"image": {0: torch.export.Dim("batch")}})
    except Exception as exc:  # the exporter's errors name the operator it could not translate
        raise RunFailed(f"ONNX export of {meta['model_name']} failed: {type(exc).__name__}: {exc}",
                        "rerun with -v for the traceback; try another torch version") from None
    proto = program.model_proto
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    return _write_onnx(proto, path, onnx_metadata(meta, "fp32", opset_used))


def quantize_int8(src: Path, dst: Path) -> Path:
    """ONNX Runtime's dynamic int8 quantisation of the weights (MatMul/Gemm); metadata kept."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load(str(src))
    metadata = {p.key: json.loads(p.value) for p in proto.metadata_props}
    # The exporter's value_info holds shapes that onnx's shape inference rejects inside the
    # quantiser ("Inferred shape and existing shape differ"); they are hints only, so drop them.
    del proto.graph.value_info[:]
    plain, tmp = dst.with_name(f".{dst.name}.in.tmp"), dst.with_name(f".{dst.name}.tmp")
    try:
        onnx.save(proto, str(plain))
        with _quiet_root_logger():  # it advises pre-processing on every call, through the root logger
            quantize_dynamic(str(plain), str(tmp), weight_type=QuantType.QInt8)
        quantized = onnx.load(str(tmp))
    finally:
        plain.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return _write_onnx(quantized, dst, {**metadata, "precision": "int8"})


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def export_coreml(model: nn.Module, meta: dict[str, Any], path: Path) -> Path:
    """A Core ML package (optional extra; conversion runs where coremltools supports it)."""
    ct = require_coremltools()
    size = int(meta["input_size"][-1])
    traced = torch.jit.trace(PixelModel(model, tuple(meta["mean"]), tuple(meta["std"])).eval(),
                             torch.zeros(1, 3, size, size, dtype=torch.uint8))
    try:
        package = ct.convert(traced, inputs=[ct.TensorType(name="image", shape=(1, 3, size, size))],
                             convert_to="mlprogram")
    except Exception as exc:  # e.g. an operator coremltools lacks (timm's RoPE before 1.0.21: tensor_split)
        raise RunFailed(f"Core ML conversion of {meta['model_name']} failed: {type(exc).__name__}: {exc}",
                        "no .mlpackage was written; use the ONNX export") from None
    package.short_description = f"Sustain {meta['model_name']}: {len(meta['classes'])} waste classes"
    package.user_defined_metadata.update({k: json.dumps(v) for k, v in onnx_metadata(meta, "fp32", 0).items()})
    package.save(str(path))
    return path


def require_coremltools() -> Any:
    try:
        import coremltools
    except ImportError:
        raise UsageError("--format coreml needs the optional package coremltools, which is not installed",
                         "pip install coremltools (numeric parity of Core ML is checkable on macOS only)") from None
    return coremltools


# --------------------------------------------------------------------------- the parity gate


@dataclass
class Scored:
    """Each side's probabilities over the readable images of a split, and its scoring time."""

    probs: dict[str, np.ndarray]
    seconds: dict[str, float]
    targets: np.ndarray
    failed: list[str]


def score_split(rows: list[Any], predictors: dict[str, Predictor], batch_size: int = 32) -> Scored:
    """Decode each image once, then score it with every predictor (timed apart from the decoding)."""
    from tqdm.auto import tqdm

    probs: dict[str, list[np.ndarray]] = {name: [] for name in predictors}
    seconds = dict.fromkeys(predictors, 0.0)
    targets, failed = [], []
    num_classes = next(iter(predictors.values())).taxonomy.num_classes
    for start in tqdm(range(0, len(rows), batch_size), desc="Parity", leave=False):
        images = []
        for row in rows[start : start + batch_size]:
            try:
                images.append(load_rgb(row.path))
            except CorruptImage as exc:
                log.warning("⚠️  %s could not be read (%s); not scored", row.path, exc)
                failed.append(row.path)
                continue
            target = np.zeros(num_classes, dtype=np.float32)
            target[list(row.targets)] = 1.0
            targets.append(target)
        if not images:
            continue
        for name, predictor in predictors.items():
            t = time.perf_counter()
            probs[name].append(predictor.predict_proba(images, batch_size=batch_size))
            seconds[name] += time.perf_counter() - t
    empty = np.zeros((0, num_classes), dtype=np.float32)
    return Scored({k: np.concatenate(v) if v else empty for k, v in probs.items()}, seconds,
                  np.stack(targets) if targets else empty, failed)


def compare(reference: np.ndarray, exported: np.ndarray, targets: np.ndarray, taxonomy: Taxonomy,
            gate: Gate) -> dict[str, Any]:
    """Agreement of two sides' probabilities and their metrics, with the gate's verdict."""
    n = len(reference)
    ref_top, exp_top = reference.argmax(1), exported.argmax(1)
    bin_of = [taxonomy.bin_of(c) for c in taxonomy.classes]
    top1 = float(np.mean(ref_top == exp_top)) if n else 1.0
    bins = float(np.mean([bin_of[a] == bin_of[b] for a, b in zip(ref_top, exp_top, strict=True)])) if n else 1.0
    m_ref, m_exp = epoch_metrics(reference, targets, taxonomy), epoch_metrics(exported, targets, taxonomy)
    diff = np.abs(reference - exported) if n else np.zeros(1)
    out = {
        "n": n,
        "top1_agreement": top1,
        "top1_disagreements": int(np.sum(ref_top != exp_top)),
        "bin_agreement": bins,
        "accuracy": _sides(m_ref["acc"], m_exp["acc"]),
        "macro_f1": _sides(m_ref["macro_f1"], m_exp["macro_f1"]),
        "max_abs_prob_diff": float(diff.max()),
        "mean_abs_prob_diff": float(diff.mean()),
        "thresholds": {"top1_agreement": gate.top1_for(n), "bin_agreement": gate.bins,
                       "abs_delta_macro_f1_points": gate.f1_points},
    }
    out["failures"] = gate_failures(out, gate)
    out["passed"] = not out["failures"]
    return out


def _sides(torch_value: float | None, exported_value: float | None) -> dict[str, float | None]:
    delta = None if torch_value is None or exported_value is None else exported_value - torch_value
    return {"torch": torch_value, "exported": exported_value, "delta": delta}


def gate_failures(c: dict[str, Any], gate: Gate) -> list[str]:
    """One line per missed pass mark, with the numbers."""
    problems = []
    if c["top1_agreement"] < gate.top1_for(c["n"]):
        problems.append(f"top-1 agreement {c['top1_agreement']:.2%} < {gate.top1_for(c['n']):.2%} "
                        f"({c['top1_disagreements']} of {c['n']} images answered differently)")
    if c["bin_agreement"] < gate.bins:
        problems.append(f"bin agreement {c['bin_agreement']:.2%} < {gate.bins:.2%}")
    delta = c["macro_f1"]["delta"]
    if delta is not None and abs(100 * delta) > gate.f1_points + 1e-9:
        problems.append(f"macro-F1 {100 * c['macro_f1']['torch']:.2f} → {100 * c['macro_f1']['exported']:.2f} "
                        f"(|Δ| {abs(100 * delta):.2f} > {gate.f1_points} points)")
    return problems


def parity_gate(loaded: LoadedCheckpoint, run_dir: Path, files: dict[str, Path], split: str,
                batch_size: int = 32) -> dict[str, Any]:
    """Score ``split`` with PyTorch and with each exported ONNX file; the gate's verdict per file."""
    try:
        rows, _ = read_manifest_split(run_dir / MANIFEST, split, loaded.taxonomy)
    except UsageError as exc:
        raise UsageError(f"{exc.message} (the parity gate scores the run's {split} split)",
                         "export from the run folder, pick --split val, or skip the gate with --no-verify") from None
    cpu = torch.device("cpu")
    predictors = {"torch": Predictor(loaded.model, loaded.taxonomy, loaded.data_config, cpu, loaded.meta)}
    for precision, path in files.items():
        predictors[precision] = Predictor(OnnxBackend(path, loaded.data_config, cpu), loaded.taxonomy,
                                          loaded.data_config, cpu, loaded.meta)
    log.info("🔍 Parity gate: %d %s images, PyTorch vs %s", len(rows), split, " and ".join(files))
    scored = score_split(rows, predictors, batch_size)
    n = len(scored.targets)
    latency = {k: 1000.0 * s / max(n, 1) for k, s in scored.seconds.items()}
    results = {}
    for precision, path in files.items():
        c = compare(scored.probs["torch"], scored.probs[precision], scored.targets, loaded.taxonomy, GATES[precision])
        c["latency_ms_per_image"] = {"torch": latency["torch"], "exported": latency[precision],
                                     "batch_size": batch_size, "device": "cpu"}
        results[path.name] = {"precision": precision, "size_bytes": path.stat().st_size, **c}
    return {"split": split, "n_images": len(rows), "unreadable": scored.failed, "files": results,
            "passed": all(r["passed"] for r in results.values())}


# --------------------------------------------------------------------------- sustain export


def export_run(path: str | Path, formats: list[str] | tuple[str, ...] = ("onnx",), quantize: str | None = None,
               split: str = "test", out: str | Path | None = None, verify: bool = True,
               batch_size: int = 32) -> dict[str, Any]:
    """Export a run folder or checkpoint; return the `export_report.json` contents.
    Raises `RunFailed` (exit 1) when the parity gate fails, after writing the report."""
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UsageError(f"Unknown export format(s) {unknown}", f"choose from {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise UsageError(f"Unknown --quantize {quantize!r}", "only int8 is supported")
    if quantize and "onnx" not in formats:
        raise UsageError("--quantize int8 quantises the ONNX model", "add --format onnx")
    if "coreml" in formats:
        require_coremltools()  # before anything is written
    loaded = load_checkpoint_model(path, "cpu")
    run_dir = loaded.path if loaded.path.is_dir() else loaded.path.parent
    check_taxonomy(loaded, run_dir)
    out_dir = Path(out).expanduser() if out else run_dir / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_previous(out_dir)

    write_model_folder(loaded, run_dir, out_dir / "model")
    log.info("✓ Model folder (timm/Hugging Face): %s", out_dir / "model")
    files: dict[str, Path] = {}
    if "onnx" in formats:
        files["fp32"] = export_onnx(loaded.model, loaded.meta, out_dir / "model.onnx")
        log.info("✓ ONNX: %s (%.1f MB)", files["fp32"], files["fp32"].stat().st_size / 1e6)
        if quantize:
            files["int8"] = quantize_int8(files["fp32"], out_dir / "model_int8.onnx")
            log.info("✓ ONNX int8: %s (%.1f MB)", files["int8"], files["int8"].stat().st_size / 1e6)
    if "coreml" in formats:
        coreml = export_coreml(loaded.model, loaded.meta, out_dir / "model.mlpackage")
        log.info("✓ Core ML: %s (numeric parity is checked on macOS only)", coreml)

    report: dict[str, Any] = {"checkpoint": str(loaded.path), "model_name": loaded.meta["model_name"],
                              "manifest_hash": loaded.meta.get("manifest_hash"), "sustain_version": sustain_version(),
                              "thresholds": {k: asdict(g) for k, g in GATES.items()}, "verified": verify}
    if verify and files:
        report.update(parity_gate(loaded, run_dir, files, split, batch_size))
        mark_rejected(report, out_dir)
    else:
        why = "--no-verify" if not verify else "Core ML is checkable on macOS only"
        log.warning("⚠️  PARITY GATE SKIPPED (%s): nobody checked that the exported model answers "
                    "like the trained one. Do not deploy it unchecked.", why)
        report["passed"] = None
    atomic_write_json(out_dir / EXPORT_REPORT, report)
    _log_verdict(report, out_dir / EXPORT_REPORT)
    return report


def check_taxonomy(loaded: LoadedCheckpoint, run_dir: Path) -> None:
    """Refuse a checkpoint whose classes differ from those of the run folder it sits in."""
    run_json = run_dir / RUN
    if not run_json.is_file():
        return
    try:
        classes = json.loads(run_json.read_text(encoding="utf-8")).get("classes")
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"Cannot read {run_json}: {exc}", "restore it, or export the checkpoint from another folder") from None
    if classes is not None and list(classes) != list(loaded.taxonomy.classes):
        raise UsageError(f"Checkpoint {loaded.path} has other classes than its run folder ({run_json}): "
                         f"{len(loaded.taxonomy.classes)} vs {len(classes)} classes",
                         "export the checkpoint from the run that trained it; its split and taxonomy belong to it")


def _log_verdict(report: dict[str, Any], path: Path) -> None:
    for name, r in report.get("files", {}).items():
        lat = r["latency_ms_per_image"]
        log.info("  %s: top-1 agreement %.2f%%, bin agreement %.2f%%, macro-F1 %s, max |Δp| %.2e, "
                 "%.2f ms/image (PyTorch %.2f)", name, 100 * r["top1_agreement"], 100 * r["bin_agreement"],
                 _f1_text(r["macro_f1"]), r["max_abs_prob_diff"], lat["exported"], lat["torch"])
        for problem in r["failures"]:
            log.error("  ❌ %s: %s", name, problem)
    if report["passed"]:
        log.info("✅ Parity gate passed on %d %s images: %s", report["n_images"], report["split"], path)
    elif report["passed"] is False:
        failed = [name for name, r in report["files"].items() if not r["passed"]]
        raise RunFailed(f"Parity gate failed for {', '.join(failed)} (numbers in {path})",
                        "do not deploy these files; the fp32 model is usually fine when only int8 fails")


def _f1_text(f1: dict[str, float | None]) -> str:
    if f1["torch"] is None or f1["exported"] is None:
        return "n/a"
    return f"{100 * f1['torch']:.2f} → {100 * f1['exported']:.2f}"


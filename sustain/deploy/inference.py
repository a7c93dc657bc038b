"""Inference: `Predictor` and `sustain predict` (SPEC §8).

    from sustain import Predictor
    predictor = Predictor.from_checkpoint("checkpoints/demo")   # or best_model.safetensors / a .pth
    for p in predictor.predict(["photo.jpg", "folder/"], topk=3):
        print(p.input, p.topk, p.bin, p.error)

The checkpoint carries everything preprocessing needs (input size, mean/std,
interpolation, crop_pct) and the taxonomy (classes, bins), so inference uses
exactly the eval transform and image decoding of training. It also carries the
calibration temperature T (probabilities are ``softmax(logits / T)``, on both
backends) and, when trained with ``eval.accept_accuracy``, the accept threshold:
each prediction then says ``decision: "accept"`` or ``"review"``. Images are decoded
one by one and scored in batches. A file that cannot be read gets a result
with ``error`` set and no classes; the others are still scored.

Two backends score the images: PyTorch (the checkpoint) and ONNX Runtime (the
``model.onnx`` that `sustain export` writes, ``Predictor.from_onnx``). Both
decode, resize and crop the same way; the ONNX graph takes the uint8 pixels
and normalises inside, so its metadata is all it needs.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T

from ..data import CorruptImage, load_rgb, to_rgb, walk_source
from ..device import resolve_device
from ..errors import UsageError
from ..evaluate import AcceptPolicy, apply_temperature
from ..taxonomy import Taxonomy
from ..transforms import build_eval_transform
from .loading import LoadedCheckpoint, load_checkpoint_model, taxonomy_from_meta

log = logging.getLogger("sustain.deploy.inference")

ImageInput = str | Path | Image.Image
# Images per forward pass when the caller gives none. On a GPU big batches fill the device;
# on a CPU a ViT is compute-bound already at batch 1 and large batches only spill caches
# (docs/performance.md, "Inference").
DEFAULT_BATCH_SIZE = {"cuda": 32, "mps": 16, "cpu": 8}


def default_batch_size(device: torch.device) -> int:
    return DEFAULT_BATCH_SIZE.get(device.type, 8)


@dataclass
class Prediction:
    """The result for one image: top-k (class, probability) pairs, the bin of the top class and,
    when the model carries an accept threshold, ``decision`` ("accept" or "review"); or
    ``error`` (and nothing else) when the image could not be read."""

    input: str
    topk: list[tuple[str, float]] = field(default_factory=list)
    bin: str | None = None
    error: str | None = None
    decision: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str | None:
        return self.topk[0][0] if self.topk else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "topk": [{"class": c, "probability": p} for c, p in self.topk],
            "bin": self.bin,
            "decision": self.decision,
            "error": self.error,
        }

    def csv_row(self) -> list[str]:
        """`CSV_COLUMNS`: the top class with its probability, bin and decision; all top-k as `class:prob;…`."""
        top = self.topk[0] if self.topk else ("", None)
        return [self.input, top[0], "" if top[1] is None else f"{top[1]:.6f}", self.bin or "", self.decision or "",
                ";".join(f"{c}:{p:.6f}" for c, p in self.topk), self.error or ""]


CSV_COLUMNS = ("input", "class", "probability", "bin", "decision", "topk", "error")


@dataclass
class _Loaded:
    """One input after decoding: an RGB image, or the reason it has none."""

    name: str
    image: Image.Image | None
    error: str | None = None


# --------------------------------------------------------------------------- inputs


def expand_inputs(items: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """Files and PIL images as given; directories walked as ingestion walks a source
    (`data.walk.walk_source`: sorted, image extensions only, hidden files and OS litter
    skipped). A path that does not exist stays in the list (it becomes an error)."""
    if isinstance(items, (str, Path, Image.Image)):
        items = [items]
    out: list[ImageInput] = []
    for item in items:
        if isinstance(item, (str, Path)) and Path(item).is_dir():
            found = [f.path for f in walk_source(item).files]
            out.extend(found) if found else out.append(str(item))
        else:
            out.append(item)
    return out


def _load(item: ImageInput, index: int) -> _Loaded:
    if isinstance(item, Image.Image):
        return _Loaded(f"<image {index}>", to_rgb(item))
    path = Path(item)
    if path.is_dir():
        return _Loaded(str(item), None, "no image files in this folder")
    if not path.exists():
        return _Loaded(str(item), None, "no such file")
    try:
        return _Loaded(str(item), load_rgb(path))
    except CorruptImage as exc:
        return _Loaded(str(item), None, str(exc))


def _chunks(items: Sequence[ImageInput], size: int) -> Iterator[list[_Loaded]]:
    """Decode `size` inputs at a time, so a large folder never sits in memory at once."""
    for start in range(0, len(items), size):
        yield [_load(item, start + i) for i, item in enumerate(items[start : start + size])]


# --------------------------------------------------------------------------- backends


def split_eval_transform(data_config: dict[str, Any]) -> tuple[T.Compose, T.Compose]:
    """The eval transform in two halves: decode-side (RGB, resize, crop: PIL in, PIL out at
    the model's size) and tensor-side (to float, normalise). The ONNX backend feeds the first
    half's pixels as uint8; the PyTorch backend runs both, exactly as training evaluated."""
    steps = build_eval_transform(dict(data_config)).transforms
    cut = next(i for i, step in enumerate(steps) if isinstance(step, T.ToTensor))
    return T.Compose(steps[:cut]), T.Compose(steps[cut:])


def to_pixels(images: Sequence[Image.Image], resize: T.Compose) -> np.ndarray:
    """uint8 [N, 3, S, S] RGB: what an exported model takes."""
    return np.stack([np.asarray(resize(im), dtype=np.uint8).transpose(2, 0, 1) for im in images])


class TorchBackend:
    """A PyTorch module and the full eval transform."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, data_config: dict[str, Any], device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.transform = build_eval_transform(dict(data_config))

    def logits(self, images: Sequence[Image.Image]) -> np.ndarray:
        x = torch.stack([self.transform(im) for im in images]).to(self.device)
        with torch.inference_mode():
            return self.model(x).float().cpu().numpy()


class OnnxBackend:
    """An exported ``model.onnx`` in an ONNX Runtime session: uint8 pixels in, logits out."""

    name = "onnx"

    def __init__(self, path: str | Path, data_config: dict[str, Any], device: torch.device,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            device = torch.device("cpu")  # ONNX Runtime has no MPS provider; CPU it is
        options = ort.SessionOptions()
        if threads:  # a server plans its threads; otherwise ONNX Runtime takes every core
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.device = device
        self.resize, _ = split_eval_transform(data_config)

    def logits(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: to_pixels(images, self.resize)})[0],
                          dtype=np.float32)


def read_onnx_meta(path: str | Path) -> dict[str, Any]:
    """The metadata_props `sustain export` writes (JSON values), as a dict."""
    import onnxruntime as ort

    try:
        props = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf errors
        raise UsageError(f"Cannot read ONNX model {path}: {exc}", "export it again with `sustain export`") from None
    meta = {k: json.loads(v) for k, v in props.items()}
    missing = [k for k in ("classes", "input_size", "mean", "std") if k not in meta]
    if missing:
        raise UsageError(f"ONNX model {path} lacks the metadata {missing}",
                         "use a model.onnx written by `sustain export`")
    return meta


def resolve_onnx(path: str | Path) -> Path:
    """A ``.onnx`` file, or the ``model.onnx`` in a folder or in its ``export/``."""
    path = Path(path).expanduser()
    for candidate in (path, path / "model.onnx", path / "export" / "model.onnx"):
        if candidate.is_file() and candidate.suffix == ".onnx":
            return candidate
    raise UsageError(f"No ONNX model at {path}",
                     f"export one first: `sustain export {path} --format onnx`, or pass the .onnx file")


# --------------------------------------------------------------------------- predictor


class Predictor:
    """A trained model with its preprocessing and taxonomy, ready to classify images.

    ``model`` is a PyTorch module, or an `OnnxBackend` (see `Predictor.from_onnx`)."""

    def __init__(self, model: torch.nn.Module | OnnxBackend, taxonomy: Taxonomy, data_config: dict[str, Any],
                 device: torch.device, meta: dict[str, Any] | None = None) -> None:
        self.backend = model if isinstance(model, OnnxBackend) else TorchBackend(model, data_config, device)
        self.model = getattr(self.backend, "model", None)  # the torch module, when there is one
        self.taxonomy = taxonomy
        self.data_config = data_config
        self.device = self.backend.device
        self.meta = meta or {}
        self.temperature = float(self.meta.get("temperature") or 1.0)  # 1: a model trained before calibration
        self.policy = AcceptPolicy.from_meta(self.meta)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "auto",
                        backend: str = "torch") -> Predictor:
        """Load a run folder, ``best_model.safetensors`` (+ its ``.json``) or a ``.pth`` checkpoint;
        with ``backend="onnx"`` the run's exported ``export/model.onnx`` (or a ``.onnx`` file)."""
        if backend == "onnx":
            return cls.from_onnx(path, device)
        if backend != "torch":
            raise UsageError(f"Unknown backend {backend!r}", "use torch or onnx")
        dev = resolve_device(device)
        loaded = load_checkpoint_model(path, dev)
        return cls(loaded.model, loaded.taxonomy, loaded.data_config, dev, loaded.meta)

    @classmethod
    def from_onnx(cls, path: str | Path, device: str | torch.device = "auto", threads: int | None = None) -> Predictor:
        """An exported ``model.onnx`` (or a folder holding one, or a run with ``export/``):
        classes, bins and preprocessing come from its metadata."""
        path = resolve_onnx(path)
        meta = read_onnx_meta(path)
        data_config = LoadedCheckpoint(None, meta, taxonomy_from_meta(meta), path).data_config
        backend = OnnxBackend(path, data_config, resolve_device(device), threads)
        return cls(backend, taxonomy_from_meta(meta), data_config, backend.device, meta)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.taxonomy.classes

    def predict_proba(self, images: Sequence[Image.Image], tta: bool = False,
                      batch_size: int | None = None) -> np.ndarray:
        """Class probabilities [N, C] for RGB PIL images; with ``tta`` the mean over each
        image and its mirror image (mirrored before the transform, so crops match exactly)."""
        batch_size = batch_size or default_batch_size(self.device)
        out = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            probs = self._probs(batch)
            if tta:
                probs = (probs + self._probs([ImageOps.mirror(im) for im in batch])) / 2
            out.append(probs)
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), dtype=np.float32)

    def _probs(self, images: Sequence[Image.Image]) -> np.ndarray:
        return apply_temperature(self.backend.logits(images), self.temperature)

    def predict(self, images_or_paths: ImageInput | Iterable[ImageInput], topk: int = 3, tta: bool = False,
                batch_size: int | None = None) -> list[Prediction]:
        """One `Prediction` per image, in input order (directories expanded in place).
        ``batch_size`` defaults to `default_batch_size` of the device."""
        batch_size = batch_size or default_batch_size(self.device)
        items = expand_inputs(images_or_paths)
        results: list[Prediction] = []
        for chunk in _chunks(items, batch_size):
            results.extend(_score_chunk([self], chunk, topk, tta, batch_size))
        return results


def _score_chunk(predictors: Sequence[Predictor], chunk: list[_Loaded], topk: int, tta: bool,
                 batch_size: int) -> list[Prediction]:
    """Average the predictors' probabilities (an ensemble when several) over the readable images."""
    good = [item for item in chunk if item.error is None]
    images = [item.image for item in good]
    probs = np.mean([p.predict_proba(images, tta, batch_size) for p in predictors], axis=0) if good else None
    taxonomy = predictors[0].taxonomy
    # The threshold was chosen on one model's calibrated probabilities: an ensemble's mean has none.
    policy = predictors[0].policy if len(predictors) == 1 else None
    decisions = policy.decisions(probs, taxonomy) if policy is not None and probs is not None else [None] * len(good)
    rows = zip(probs if probs is not None else [], decisions, strict=True)
    scored = dict(zip((id(item) for item in good), rows, strict=True))
    return [
        Prediction(item.name, error=item.error) if item.error is not None
        else top_predictions(item.name, scored[id(item)][0], taxonomy, topk, scored[id(item)][1])
        for item in chunk
    ]


def top_predictions(name: str, probs: np.ndarray, taxonomy: Taxonomy, topk: int,
                    decision: str | None = None) -> Prediction:
    """The k most probable classes (k capped at C) and the bin of the first."""
    order = np.argsort(-probs, kind="stable")[: max(1, min(topk, len(probs)))]
    pairs = [(taxonomy.classes[i], float(probs[i])) for i in order]
    return Prediction(name, pairs, taxonomy.bin_of(pairs[0][0]), decision=decision)


# --------------------------------------------------------------------------- sustain predict


def load_ensemble(checkpoints: Sequence[str | Path], device: str = "auto", backend: str = "torch") -> list[Predictor]:
    """Predictors for every --checkpoint; they must share the class list (same order)."""
    predictors = [Predictor.from_checkpoint(path, device, backend) for path in checkpoints]
    first = predictors[0]
    for path, p in zip(checkpoints[1:], predictors[1:], strict=True):
        if p.classes != first.classes:
            raise UsageError(f"Checkpoint {path} has other classes than {checkpoints[0]}",
                             "an ensemble needs checkpoints trained on the same taxonomy")
    return predictors


def predict_cli(checkpoints: Sequence[str | Path], inputs: Sequence[str | Path], topk: int = 3,
                tta: bool = False, as_json: bool = False, *, as_csv: bool = False, batch_size: int | None = None,
                device: str = "auto", backend: str = "torch", out: IO[str] | None = None) -> int:
    """`sustain predict`: print a table (or JSON lines, or CSV) and return the exit code:
    0 when every image was scored, 1 when any input could not be read (its row says why).
    With several checkpoints their probabilities are averaged. ``backend="onnx"`` runs each
    run's exported ``export/model.onnx`` (or the given ``.onnx`` files) in ONNX Runtime."""
    if topk < 1:
        raise UsageError(f"--topk must be at least 1, got {topk}")
    out = out or sys.stdout
    predictors = load_ensemble(checkpoints, device, backend)
    items = expand_inputs(inputs)
    batch_size = batch_size or default_batch_size(predictors[0].device)
    results: list[Prediction] = []
    writer = csv.writer(out, lineterminator="\n") if as_csv else None
    try:
        if writer is not None:
            writer.writerow(CSV_COLUMNS)
        for chunk in _chunks(items, batch_size):
            scored = _score_chunk(predictors, chunk, topk, tta, batch_size)
            results.extend(scored)
            if as_json:  # stream: a consumer sees each line as soon as its batch is done
                for r in scored:
                    out.write(json.dumps(r.to_dict()) + "\n")
                out.flush()
            if writer is not None:
                writer.writerows(r.csv_row() for r in scored)
                out.flush()
        if not as_json and writer is None:
            out.write(format_table(results) + "\n")
            failed = sum(not r.ok for r in results)
            out.write(f"{len(results) - failed} image(s) classified, {failed} failed\n")
            out.flush()
    except BrokenPipeError:  # `sustain predict … | head`: the reader left; stop quietly
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1
    return 0 if all(r.ok for r in results) else 1


def format_table(results: Sequence[Prediction]) -> str:
    """An aligned table: image, top class, its probability, bin, the runners-up."""
    decided = any(r.decision for r in results)  # the DECISION column, when the model carries a threshold
    rows = [("IMAGE", "CLASS", "PROB", "BIN", *(("DECISION",) if decided else ()), "NEXT")]
    for r in results:
        if r.ok:
            rest = ", ".join(f"{c} {p:.1%}" for c, p in r.topk[1:])
            rows.append((r.input, r.topk[0][0], f"{r.topk[0][1]:.1%}", r.bin or "-",
                         *((r.decision or "-",) if decided else ()), rest))
        else:
            rows.append((r.input, "ERROR", "", "", *(("",) if decided else ()), r.error or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if i == 2 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row[:-1], widths, strict=True))]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)

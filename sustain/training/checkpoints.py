"""Checkpoint files (SPEC §7): atomic, tensors and plain types only, loaded with `weights_only=True`.

Files in the output folder:
- `last.pth`: everything an exact resume needs (see `docs/training.md`).
- `best_model_epoch{E}_acc{A:.2f}.pth`: the best weights so far (`model`) and
  their metadata (`meta`); only the current best is kept.
- `best_model.safetensors` + `best_model.json`: the weights-only export that
  inference reads.

`load_checkpoint_model` rebuilds a trained model from ``best_model.safetensors``
+ ``best_model.json`` (or a ``.pth``) with the classes, bins and preprocessing
stored beside the weights: `sustain evaluate`, `predict` and `export` use it.

Nothing here unpickles arbitrary objects: a checkpoint that holds anything
but tensors and plain Python types is refused, and its payload never runs.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.models import clean_state_dict  # strips DDP 'module.' / torch.compile prefixes
from torch import nn

from ..artifacts import BEST_GLOB, EXPORT_META, EXPORT_WEIGHTS, LAST, best_checkpoint_name  # noqa: F401  (re-exported)
from ..errors import UsageError
from ..model import create_for_inference
from ..taxonomy import Taxonomy
from ..utils import atomic_write, atomic_write_text

log = logging.getLogger("sustain.training.checkpoints")

FORMAT_VERSION = 2  # 2: last.pth also holds a position inside an epoch (step, partial, events)

_PLAIN = (str, int, float, bool, type(None))


# --------------------------------------------------------------------------- save / load


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write `state` atomically; refuse anything `torch.load(weights_only=True)` could not read back."""
    check_plain(state)
    return atomic_write(path, lambda fh: torch.save(dict(state), fh))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`. A file holding pickled objects is refused."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"Checkpoint not found: {path}", "pass --resume auto, or the path of a last.pth")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for forbidden globals, RuntimeError for a damaged file
        raise UsageError(
            f"Refusing to load checkpoint {path}: it is not a plain tensor checkpoint "
            f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})",
            "only files written by `sustain train` (tensors and plain Python types) are loaded; "
            "never load a checkpoint from an untrusted source with weights_only=False",
        ) from None
    if not isinstance(state, dict):
        raise UsageError(f"Checkpoint {path} holds a {type(state).__name__}, not a dict of training state")
    return state


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first value that is not a tensor or a plain Python type."""
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PLAIN):
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}")
            check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__name__}: checkpoints hold only tensors and plain types")


def state_dict_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    """A true copy of the weights on the CPU: later training steps cannot change it."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------- best model


def save_best(out_dir: str | Path, weights: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write the new best checkpoint and the inference export; then delete the previous best.

    `weights` must already be a copy (`state_dict_copy`). `meta` holds the
    `best_model.json` fields, including `epoch` and `val_acc` (a fraction).
    """
    out_dir = Path(out_dir)
    path = out_dir / best_checkpoint_name(int(meta["epoch"]), float(meta["val_acc"]))
    previous = [p for p in out_dir.glob(BEST_GLOB) if p != path]
    save_checkpoint(path, {"format": FORMAT_VERSION, "kind": "best", "model": dict(weights), "meta": dict(meta)})
    export_weights(out_dir, weights, meta)
    for old in previous:  # only after the new files are complete
        old.unlink(missing_ok=True)
    return path


def export_weights(out_dir: str | Path, weights: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """`best_model.safetensors` + `best_model.json` (the files inference uses)."""
    from safetensors.torch import save as to_safetensors

    out_dir = Path(out_dir)
    blob = to_safetensors(dict(weights), metadata={"format": "pt"})
    path = atomic_write(out_dir / EXPORT_WEIGHTS, lambda fh: fh.write(blob))
    atomic_write_text(out_dir / EXPORT_META, json.dumps(_json_safe(meta), indent=2) + "\n")
    return path


def record_calibration(out_dir: str | Path, calibration: Mapping[str, Any]) -> Path:
    """Add the end of training's temperature and accept threshold to `best_model.json`."""
    from ..evaluate.calibration import meta_fields

    path = Path(out_dir) / EXPORT_META
    meta = {**read_meta(path), **meta_fields(dict(calibration))}
    return atomic_write_text(path, json.dumps(_json_safe(meta), indent=2) + "\n")


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- resume


def resolve_resume(resume: str | None, out_dir: str | Path) -> Path | None:
    """The checkpoint `--resume auto|PATH` points at (None: start fresh)."""
    if not resume:
        return None
    if resume == "auto":
        path = Path(out_dir) / LAST
        if path.is_file():
            return path
        log.info("No %s in %s: starting a new run", LAST, out_dir)
        return None
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise UsageError(f"Checkpoint to resume from not found: {path}", "use --resume auto or the path of a last.pth")
    return path


def check_resume_compatible(state: Mapping[str, Any], classes: list[str], manifest_hash: str, path: Path) -> None:
    """Refuse a resume whose class list or data manifest differs from this run's."""
    if state.get("kind") != "last":
        raise UsageError(f"{path} is not a resumable checkpoint (kind {state.get('kind')!r})",
                         "resume from last.pth; best checkpoints hold weights only")
    fmt = state.get("format", 1)  # version 1 files lack a position: they resume at an epoch's end
    if not isinstance(fmt, int) or fmt > FORMAT_VERSION:
        raise UsageError(f"{path} has checkpoint format {fmt!r}; this Sustain reads up to "
                         f"{FORMAT_VERSION}", "update Sustain, or start a new run in another output folder")
    saved = list(state.get("classes") or [])
    if saved != list(classes):
        added = [c for c in classes if c not in saved]
        removed = [c for c in saved if c not in classes]
        detail = "; ".join(filter(None, [f"added {added}" if added else "", f"removed {removed}" if removed else ""]))
        raise UsageError(
            f"Cannot resume from {path}: the class list changed ({detail or 'same classes, different order'})",
            "resume with the taxonomy the run started with, or start a new run in another output folder",
        )
    if state.get("manifest_hash") != manifest_hash:
        raise UsageError(
            f"Cannot resume from {path}: the data manifest changed "
            f"(hash {state.get('manifest_hash')} in the checkpoint, {manifest_hash} now)",
            "resume with the same data and split, or start a new run in another output folder",
        )


# --------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (CPU, CUDA, MPS) RNG states as tensors and plain types."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        state["mps"] = mps.get_rng_state()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


# --------------------------------------------------------------------------- loading a trained model (evaluate, predict, export)


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module  # in eval mode, on the requested device
    meta: dict[str, Any]  # the best_model.json fields
    taxonomy: Taxonomy
    path: Path

    @property
    def data_config(self) -> dict[str, Any]:
        """timm-style data config: input_size, mean, std, interpolation, crop_pct."""
        m = self.meta
        return {
            "input_size": tuple(m["input_size"]),
            "mean": tuple(m["mean"]),
            "std": tuple(m["std"]),
            "interpolation": m.get("interpolation", "bicubic"),
            "crop_pct": float(m.get("crop_pct", 1.0)),
            "crop_mode": m.get("crop_mode", "center"),
        }


_REQUIRED_META = ("model_name", "num_classes", "classes", "input_size", "mean", "std")


def export_paths(path: Path) -> tuple[Path, Path]:
    """(weights, meta) for a run folder, a best_model.safetensors or a best_model.json."""
    if path.is_dir():
        return path / EXPORT_WEIGHTS, path / EXPORT_META
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"Cannot read checkpoint metadata {path}: {exc}",
                         "re-export the model, or pass the .pth checkpoint") from None
    return meta


def _check_meta(meta: Mapping[str, Any], where: Path) -> None:
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise UsageError(f"Checkpoint metadata in {where} lacks {missing}",
                         "it must come from `sustain train` (best_model.json or a best_model_*.pth)")
    if len(meta["classes"]) != int(meta["num_classes"]):
        raise UsageError(f"Checkpoint metadata in {where}: {len(meta['classes'])} classes listed "
                         f"but num_classes is {meta['num_classes']}")


def checkpoint_record(weights: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    return {"path": str(weights), "epoch": meta.get("epoch"), "val_acc": meta.get("val_acc"),
            "manifest_hash": meta.get("manifest_hash")}


def taxonomy_from_meta(meta: Mapping[str, Any]) -> Taxonomy:
    bins = meta.get("bins")
    return Taxonomy(
        classes=tuple(meta["classes"]),
        bins={k: tuple(v) for k, v in bins.items()} if bins else None,
        sets={k: tuple(v) for k, v in (meta.get("sets") or {}).items()},
    )


def load_weights(model: torch.nn.Module, weights: str | Path | Mapping[str, torch.Tensor]) -> None:
    """Load a state dict (or a .safetensors file) into `model`, strictly."""
    if not isinstance(weights, Mapping):
        from safetensors.torch import load_file

        path = Path(weights)
        if not path.is_file():
            raise UsageError(f"Checkpoint weights not found: {path}", "pass a run folder, best_model.safetensors or a .pth")
        try:
            weights = load_file(str(path), device="cpu")
        except Exception as exc:  # SafetensorError for a damaged or truncated file
            raise UsageError(f"Cannot read checkpoint weights {path}: {exc}",
                             "the file is damaged; export it again or use the best_model_*.pth") from None
    try:
        model.load_state_dict(clean_state_dict(dict(weights)), strict=True)
    except RuntimeError as exc:
        raise UsageError(f"Checkpoint weights do not fit the model: {str(exc).splitlines()[0]}",
                         "the weights and best_model.json must come from the same run") from None


def _read_pth(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict and metadata of a training checkpoint (``model`` and ``meta``, see
    `sustain.training.checkpoints.save_best`). A checkpoint without ``meta`` (``last.pth``)
    borrows it from the ``best_model.json`` beside it."""
    ckpt = load_checkpoint(path)
    state = ckpt.get("model")
    if not isinstance(state, Mapping):
        raise UsageError(f"Checkpoint {path} holds no model weights (keys: {sorted(ckpt)[:10]})",
                         "pass a best_model_*.pth, last.pth or best_model.safetensors written by `sustain train`")
    meta = dict(ckpt.get("meta") or {})
    beside = path.parent / EXPORT_META
    if beside.is_file() and (any(k not in meta for k in _REQUIRED_META) or "temperature" not in meta):
        exported = read_meta(beside)
        if all(k in meta for k in _REQUIRED_META) and exported.get("epoch") != meta.get("epoch"):
            exported = {}  # another epoch's calibration does not fit these weights
        meta = {**exported, **meta}
    return dict(state), meta


def load_checkpoint_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedCheckpoint:
    """Rebuild the trained model from a run folder, ``best_model.safetensors``/``.json``,
    or a ``.pth`` training checkpoint. The architecture comes from ``model_name`` and
    ``model_kwargs`` in the metadata; nothing is downloaded (``pretrained=False``)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"Checkpoint not found: {path}", "pass a run folder, best_model.safetensors or a .pth file")
    if path.suffix == ".pth":
        state, meta = _read_pth(path)
        where = path
    else:
        weights, meta_path = export_paths(path)
        if not meta_path.is_file():
            raise UsageError(f"Checkpoint metadata not found: {meta_path}",
                             "best_model.safetensors needs its best_model.json beside it")
        meta, where, state = read_meta(meta_path), meta_path, weights
    _check_meta(meta, where)
    try:
        model = create_for_inference(meta["model_name"], int(meta["num_classes"]), meta.get("model_kwargs") or {})
    except Exception as exc:  # timm raises RuntimeError/TypeError/ValueError for unknown names or kwargs
        raise UsageError(f"Cannot build model {meta['model_name']!r} from {where}: {exc}",
                         "check timm's version against the one in run.json") from None
    load_weights(model, state)
    model.to(device).eval()
    return LoadedCheckpoint(model=model, meta=dict(meta), taxonomy=taxonomy_from_meta(meta), path=path)

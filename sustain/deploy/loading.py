"""Loading a trained model for use: `sustain evaluate`, `predict`, `export` and `serve`.

`load_checkpoint_model` rebuilds the model from a run folder,
``best_model.safetensors`` + ``best_model.json`` (or a ``.pth``) with the
classes, bins and preprocessing stored beside the weights. Nothing is
downloaded and nothing is unpickled: weights load with `weights_only=True`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..artifacts import EXPORT_META, export_paths, read_meta
from ..errors import UsageError
from ..model import create_for_inference, load_checkpoint, load_weights
from ..taxonomy import Taxonomy, taxonomy_from_meta  # noqa: F401  (re-exported)


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


def _check_meta(meta: Mapping[str, Any], where: Path) -> None:
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise UsageError(f"Checkpoint metadata in {where} lacks {missing}",
                         "it must come from `sustain train` (best_model.json or a best_model_*.pth)")
    if len(meta["classes"]) != int(meta["num_classes"]):
        raise UsageError(f"Checkpoint metadata in {where}: {len(meta['classes'])} classes listed "
                         f"but num_classes is {meta['num_classes']}")


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

"""The best checkpoint (SPEC §7), written while training.

- `best_model_epoch{E}_acc{A:.2f}.pth`: the best weights so far (`model`) and
  their metadata (`meta`); only the current best is kept.
- `best_model.safetensors` + `best_model.json`: the weights-only export that
  evaluation and deployment read (`sustain.deploy.loading`).

`last.pth`, the resume state, is `training.resume`'s. Both go through
`sustain.model.save_checkpoint`: tensors and plain types only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts import BEST_GLOB, EXPORT_META, EXPORT_WEIGHTS, best_checkpoint_name, read_meta
from ..config import ModelConfig
from ..evaluate import calibration_meta_fields
from ..model import model_kwargs, save_checkpoint
from ..taxonomy import Taxonomy
from ..utils import atomic_write, atomic_write_text

FORMAT_VERSION = 2  # 2: last.pth also holds a position inside an epoch (step, partial, events)


def state_dict_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    """A true copy of the weights on the CPU: later training steps cannot change it."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def save_best(out_dir: str | Path, weights: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write the new best checkpoint and the inference export; then delete the previous best.

    `weights` must already be a copy (`state_dict_copy`). `meta` holds the
    `best_model.json` fields, including `epoch` and `val_acc` (a fraction).
    """
    blob, meta_text = export_files(weights, meta)  # ready before the first write
    out_dir = Path(out_dir)
    path = out_dir / best_checkpoint_name(int(meta["epoch"]), float(meta["val_acc"]))
    previous = [p for p in out_dir.glob(BEST_GLOB) if p != path]
    save_checkpoint(path, {"format": FORMAT_VERSION, "kind": "best", "model": dict(weights), "meta": dict(meta)})
    atomic_write(out_dir / EXPORT_WEIGHTS, lambda fh: fh.write(blob))
    atomic_write_text(out_dir / EXPORT_META, meta_text)
    for old in previous:  # only after the new files are complete
        old.unlink(missing_ok=True)
    return path


def export_files(weights: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> tuple[bytes, str]:
    """The contents of `best_model.safetensors` and `best_model.json` (the files inference uses)."""
    from safetensors.torch import save as to_safetensors

    return to_safetensors(dict(weights), metadata={"format": "pt"}), json.dumps(_json_safe(meta), indent=2) + "\n"


def record_calibration(out_dir: str | Path, calibration: Mapping[str, Any]) -> Path:
    """Add the end of training's temperature and accept threshold to `best_model.json`."""
    path = Path(out_dir) / EXPORT_META
    meta = {**read_meta(path), **calibration_meta_fields(dict(calibration))}
    return atomic_write_text(path, json.dumps(_json_safe(meta), indent=2) + "\n")


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def export_meta(model_cfg: ModelConfig, taxonomy: Taxonomy, data_config: dict[str, Any], manifest_hash: str) -> dict[str, Any]:
    """The `best_model.json` fields (docs/architecture.md), without the epoch-specific ones."""
    tax = taxonomy.to_dict()
    return {
        "model_name": model_cfg.name,
        "num_classes": taxonomy.num_classes,
        "classes": tax["classes"],
        "bins": tax["bins"],
        "sets": tax["sets"],
        "input_size": list(data_config["input_size"]),
        "mean": list(data_config["mean"]),
        "std": list(data_config["std"]),
        "interpolation": data_config["interpolation"],
        "crop_pct": data_config["crop_pct"],
        "crop_mode": data_config["crop_mode"],  # Predictor must crop as the final evaluation does
        "model_kwargs": model_kwargs(model_cfg),
        "manifest_hash": manifest_hash,
    }

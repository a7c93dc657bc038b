"""Train and eval transforms built from the model's pretrained config (SPEC §5).

Input size, mean, std, interpolation and crop_pct come from timm's
`resolve_model_data_config(model)` unless the model section overrides them.
The pipelines themselves are timm's `create_transform`:
- train presets (`data.augment`): `strong` is the EVA02 recipe (random-resized
  crop from scale 0.08, horizontal flip, RandAugment m9); `light` is a crop
  from scale 0.7 with no flip and no RandAugment; `none` is the eval pipeline.
  `data.augment_options` overrides single knobs of the preset.
- eval: a deterministic resize and center crop.

Every pipeline starts by converting to RGB, so any PIL mode is accepted.
"""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from .config import DataConfig, ModelConfig
from .data import to_rgb
from .errors import RunFailed

log = logging.getLogger("sustain.transforms")


@dataclass(frozen=True)
class AugmentPreset:
    crop_scale_min: float | None  # None: no random crop (eval-style resize + center crop)
    hflip: float
    rand_augment: str  # timm RandAugment string, '' for none
    random_erasing: float


PRESETS: dict[str, AugmentPreset] = {
    "strong": AugmentPreset(crop_scale_min=0.08, hflip=0.5, rand_augment="rand-m9-mstd0.5-inc1", random_erasing=0.0),
    "light": AugmentPreset(crop_scale_min=0.7, hflip=0.0, rand_augment="", random_erasing=0.0),
    "none": AugmentPreset(crop_scale_min=None, hflip=0.0, rand_augment="", random_erasing=0.0),
}


def resolve_data_config(model: nn.Module, model_cfg: ModelConfig) -> dict[str, Any]:
    """input_size (3,S,S), mean, std, interpolation, crop_pct, crop_mode: the model's pretrained config + overrides."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    if model_cfg.input_size is not None:
        cfg["input_size"] = (3, model_cfg.input_size, model_cfg.input_size)
    if model_cfg.mean is not None:
        cfg["mean"] = tuple(model_cfg.mean)
    if model_cfg.std is not None:
        cfg["std"] = tuple(model_cfg.std)
    if model_cfg.interpolation is not None:
        cfg["interpolation"] = model_cfg.interpolation
    if model_cfg.crop_mode is not None:
        cfg["crop_mode"] = model_cfg.crop_mode
    return {
        "input_size": tuple(int(v) for v in cfg["input_size"]),
        "mean": tuple(float(v) for v in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
        "interpolation": str(cfg["interpolation"]),
        "crop_pct": float(cfg.get("crop_pct") or 1.0),
        "crop_mode": str(cfg.get("crop_mode") or "center"),
    }


def resolve_augment(data_cfg: DataConfig) -> AugmentPreset:
    """The preset of `data.augment` with the non-null `data.augment_options` applied."""
    preset = PRESETS[data_cfg.augment]
    overrides = {k: v for k, v in data_cfg.augment_options.model_dump().items() if v is not None}
    aug = AugmentPreset(**{**preset.__dict__, **overrides})
    return AugmentPreset(**{**aug.__dict__, "rand_augment": capped_rand_augment(aug.rand_augment)})


def capped_rand_augment(spec: str) -> str:
    """A RandAugment string whose sampled magnitude stays at or below 9.

    With `mstd` noise timm can draw magnitude 10; for Posterize with `inc1` that
    means keeping 0 bits, which Pillow >= 13 rejects with a ValueError, about once
    per 1,300 images: a crash in a loader worker mid-epoch. Capping at 9 keeps
    the EVA02 recipe ('rand-m9-mstd0.5-inc1') and at least 1 bit. A string that
    sets its own `mmax` is left alone.
    """
    if not spec.startswith("rand") or any(part.startswith("mmax") for part in spec.split("-")):
        return spec
    return f"{spec}-mmax9"


def build_train_transform(data_config: dict[str, Any], data_cfg: DataConfig) -> T.Compose:
    aug = resolve_augment(data_cfg)
    if aug.crop_scale_min is None and not aug.rand_augment and aug.hflip == 0 and aug.random_erasing == 0:
        return build_eval_transform(data_config)
    from timm.data import create_transform

    tf = create_transform(
        input_size=data_config["input_size"],
        is_training=True,
        scale=(aug.crop_scale_min or 1.0, 1.0),
        hflip=aug.hflip,
        color_jitter=None,  # colour is often the signal (glass vs plastic); RandAugment covers photometrics
        auto_augment=aug.rand_augment or None,
        interpolation=data_config["interpolation"],
        mean=data_config["mean"],
        std=data_config["std"],
        re_prob=aug.random_erasing,
        re_mode="pixel",
    )
    return _rgb_first(tf)


def build_eval_transform(data_config: dict[str, Any]) -> T.Compose:
    from timm.data import create_transform

    tf = create_transform(
        input_size=data_config["input_size"],
        is_training=False,
        interpolation=data_config["interpolation"],
        mean=data_config["mean"],
        std=data_config["std"],
        crop_pct=data_config["crop_pct"],
        crop_mode=data_config.get("crop_mode", "center"),
    )
    return _rgb_first(tf)


class ToRGB:
    """Any PIL mode (L, P, RGBA, CMYK, I;16, ...) to RGB, exactly as ingestion converts it
    (`sustain.data.scan.to_rgb`); a class so workers can pickle it."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return to_rgb(img)

    def __repr__(self) -> str:
        return "ToRGB()"


def _rgb_first(tf: T.Compose) -> T.Compose:
    return T.Compose([ToRGB(), *tf.transforms])


# --------------------------------------------------------------------------- validation

# (width, height): square, tiny, very wide, very tall, large.
_PROBE_SIZES = ((64, 64), (7, 5), (300, 17), (23, 400), (1024, 768))
_PROBE_MODES = ("RGB", "L", "RGBA", "P", "CMYK")


def validate_transforms(train_tf, eval_tf, size: int) -> None:
    """Feed images of several sizes and modes through both pipelines; raise `RunFailed` on a bad output."""
    rng = torch.Generator().manual_seed(0)
    problems: list[str] = []
    with _rng_preserved():  # random augmentations must not shift the run's RNG streams
        for width, height in _PROBE_SIZES:
            pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=rng).numpy()
            base = Image.fromarray(pixels, "RGB")
            for mode in _PROBE_MODES:
                img = base.convert(mode)
                for name, tf in (("train", train_tf), ("val", eval_tf)):
                    problem = _check_output(tf, img, size)
                    if problem:
                        problems.append(f"{name} transform, {mode} image {width}x{height}: {problem}")
    if problems:
        raise RunFailed("Transform validation failed:\n  " + "\n  ".join(problems[:5]),
                        "check model.input_size / mean / std and data.augment_options")
    log.info("✅ Transform validation passed")


@contextmanager
def _rng_preserved():
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def _check_output(tf, img: Image.Image, size: int) -> str | None:
    try:
        out = tf(img)
    except Exception as exc:  # reported with the image that caused it
        return f"raised {type(exc).__name__}: {exc}"
    if not isinstance(out, torch.Tensor):
        return f"returned {type(out).__name__}, not a tensor"
    if tuple(out.shape) != (3, size, size):
        return f"shape {tuple(out.shape)}, expected (3, {size}, {size})"
    if out.dtype != torch.float32:
        return f"dtype {out.dtype}, expected torch.float32"
    if not torch.isfinite(out).all():
        return "non-finite values"
    return None

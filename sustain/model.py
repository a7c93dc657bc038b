"""The model factory (SPEC §5): `timm.create_model` with the three `pretrained` forms.

- `true`: timm's hub (cached). Offline, a `UsageError` names the two alternatives.
- a local `.safetensors` / `.pth` / `.bin` file. It is read with
  `weights_only=True` and handed to timm's own loader (`pretrained_cfg_overlay`),
  so timm's per-architecture filters apply (position-embedding resize,
  input-conv adaptation) and a classifier of another size is re-initialised.
- `false`: random initialisation.

`img_size` is passed when the architecture takes it. Gradient checkpointing
is opt-in and never used on MPS.

Checkpoint files hold tensors and plain Python types only: `save_checkpoint`
refuses anything else and `load_checkpoint` reads with `weights_only=True`, so
a checkpoint's payload never runs. `load_weights` puts a state dict or a
``.safetensors`` file into a model, strictly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ModelConfig
from .errors import UsageError
from .utils import atomic_write

log = logging.getLogger("sustain.model")

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
MPS_GRAD_CKPT_WARNING = "⚠️  Gradient checkpointing disabled (incompatible with MPS - causes crashes)"
# Containers that training scripts wrap a state_dict in, most specific first.
_STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


def build_model(model_cfg: ModelConfig, num_classes: int, device_type: str = "cpu") -> nn.Module:
    """Create the timm model the config asks for, with its weights, on the CPU."""
    import timm

    if not timm.is_model(model_cfg.name):
        close = timm.list_models(f"*{model_cfg.name.split('_')[0]}*")[:5]
        raise UsageError(f"Unknown timm model {model_cfg.name!r} (model.name)",
                         f"similar names: {', '.join(close)}" if close else "see timm.list_models()")
    kwargs = model_kwargs(model_cfg)
    pretrained = model_cfg.pretrained

    if pretrained is True:
        model = _create_from_hub(model_cfg.name, num_classes, kwargs)
    elif pretrained is False:
        model = _create(model_cfg.name, num_classes, kwargs)
    else:
        state_dict = read_weights_file(pretrained)
        head_rows = _head_rows(model_cfg.name, state_dict)
        fingerprints = {_fingerprint(t) for t in state_dict.values()}  # timm's filters may edit the dict
        overlay: dict[str, Any] = {"state_dict": state_dict}
        if head_rows is not None:  # timm drops (re-initialises) the head when this differs from num_classes
            overlay["num_classes"] = head_rows
        try:
            model = _create(model_cfg.name, num_classes, kwargs, pretrained=True, pretrained_cfg_overlay=overlay)
        except (RuntimeError, KeyError, ValueError) as exc:  # keys or shapes do not fit this architecture
            raise UsageError(f"Weights file {pretrained} does not fit model {model_cfg.name!r}: {_first_line(exc)}",
                             "use weights saved from the same architecture, or set model.pretrained: false") from None
        # timm keeps the overlay in pretrained_cfg: drop the state_dict so it is not held twice.
        model.pretrained_cfg.pop("state_dict", None)
        loaded = _loaded_fraction(model, fingerprints)
        if loaded < 0.5:  # timm loads non-strictly when the head differs: catch a file of another model here
            raise UsageError(f"Weights file {pretrained} does not fit model {model_cfg.name!r}: only "
                             f"{100 * loaded:.0f}% of its weight tensors were found in the file",
                             "use weights saved from the same architecture, or set model.pretrained: false")
        if head_rows != num_classes:
            log.info("  Classifier head re-initialised: the weights have %s classes, this run %d",
                     head_rows if head_rows is not None else "no", num_classes)

    if device_type == "mps":  # said on every MPS run, as users of the seed notebook expect
        log.warning(MPS_GRAD_CKPT_WARNING)
    elif model_cfg.grad_checkpointing:
        if hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        else:
            log.warning("⚠️  %s does not support gradient checkpointing; training without it", model_cfg.name)
    return model


def model_kwargs(model_cfg: ModelConfig) -> dict[str, Any]:
    """Constructor arguments besides num_classes (stored in best_model.json for inference)."""
    kwargs: dict[str, Any] = {"drop_path_rate": model_cfg.drop_path_rate}
    if model_cfg.input_size is not None:
        kwargs["img_size"] = model_cfg.input_size
    return kwargs


def create_for_inference(name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    """Rebuild an architecture from best_model.json's `model_name` / `model_kwargs`, without weights."""
    return _create(name, num_classes, dict(kwargs))


def parameter_summary(model: nn.Module) -> str:
    """`Model parameters: X.XXM total, X.XXM trainable` (SPEC §6)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"Model parameters: {total / 1e6:.2f}M total, {trainable / 1e6:.2f}M trainable"


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a local weights file, never unpickling arbitrary objects."""
    path = Path(path).expanduser()
    hint = "set model.pretrained to an existing .safetensors/.pth/.bin file, to true (timm hub) or to false (random init)"
    if not path.is_file():
        raise UsageError(f"Weights file not found: {path} (model.pretrained)", hint)
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise UsageError(f"Unsupported weights file type {path.suffix!r}: {path} (model.pretrained)", hint)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            checkpoint: Any = load_file(str(path), device="cpu")
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or a pickle with objects weights_only refuses
        raise UsageError(f"Cannot read weights file {path}: {_first_line(exc)}",
                         "only tensor-only checkpoints are accepted (torch.load weights_only=True); "
                         "re-save the state_dict, or convert it to .safetensors") from None
    if isinstance(checkpoint, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise UsageError(f"Weights file {path} holds no state_dict of tensors", hint)
    from timm.models import clean_state_dict

    return clean_state_dict(checkpoint)  # strips DDP 'module.' / torch.compile prefixes


# --------------------------------------------------------------------------- internals


def _create(name: str, num_classes: int, kwargs: dict[str, Any], **extra: Any) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, num_classes=num_classes, **kwargs, **extra)
    except TypeError as exc:
        if "img_size" in kwargs and "img_size" in str(exc):  # this architecture has no img_size argument
            rest = {k: v for k, v in kwargs.items() if k != "img_size"}
            return timm.create_model(name, num_classes=num_classes, **rest, **extra)
        raise


def _create_from_hub(name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    try:
        with _cache_only_unless_hub_reachable():
            return _create(name, num_classes, kwargs, pretrained=True)
    except (OSError, RuntimeError) as exc:  # hub errors subclass OSError; "no pretrained weights" is a RuntimeError
        raise UsageError(
            f"Could not load pretrained weights for {name!r} from the timm hub: {_first_line(exc)}",
            "offline? set model.pretrained to a local weights file (.safetensors/.pth/.bin), "
            "or to false for random initialisation",
        ) from None


@contextlib.contextmanager
def _cache_only_unless_hub_reachable(timeout_s: float = 3.0) -> Iterator[None]:
    """Without a route to the hub, read only its local cache.

    A cached model then loads at once and a missing one fails at once, instead of
    after about a minute of download retries.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or hub_reachable(constants.ENDPOINT, timeout_s):
        yield
        return
    log.info("  The timm hub (%s) is unreachable: using the local cache only", constants.ENDPOINT)
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def hub_reachable(endpoint: str, timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the hub's host opens within `timeout_s` (DNS included)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _head_rows(name: str, state_dict: dict[str, torch.Tensor]) -> int | None:
    """Number of classes of the classifier held in a state_dict (None: it has no classifier)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    heads = (cfg.classifier if cfg else None) or "head"
    for head in (heads,) if isinstance(heads, str) else heads:
        weight = state_dict.get(f"{head}.weight")
        if weight is not None:
            return int(weight.shape[0])
    return None


def _fingerprint(t: torch.Tensor) -> tuple:
    flat = t.detach().flatten()
    return tuple(t.shape), float(flat.double().sum()), tuple(flat[:4].tolist())


def _loaded_fraction(model: nn.Module, fingerprints: set[tuple]) -> float:
    """Share of the model's informative tensors (not constant-initialised) whose values came from the file."""
    classifier = model.pretrained_cfg.get("classifier") or "head"
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    informative = [t for name, t in model.state_dict().items()
                   if t.numel() > 1 and t.is_floating_point() and not name.startswith(heads)
                   and not bool((t == t.flatten()[0]).all())]
    if not informative:
        return 1.0
    return sum(_fingerprint(t) in fingerprints for t in informative) / len(informative)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- checkpoint files and weights

_PLAIN = (str, int, float, bool, type(None))


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
        from timm.models import clean_state_dict  # strips DDP 'module.' / torch.compile prefixes

        model.load_state_dict(clean_state_dict(dict(weights)), strict=True)
    except RuntimeError as exc:
        raise UsageError(f"Checkpoint weights do not fit the model: {str(exc).splitlines()[0]}",
                         "the weights and best_model.json must come from the same run") from None

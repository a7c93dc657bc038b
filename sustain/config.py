"""The typed run configuration: the single source of truth for a run.

A YAML file is read, `--set key=value` overrides are applied to the raw
mapping, and the result is validated into `Config`. Every problem becomes a
`ConfigError` that names the dotted key (exit code 2 in the CLI). Unknown keys
get a "did you mean" hint.

Relative paths (`output_dir`, `data.root`) resolve against the current
working directory; a source's relative `root` resolves against `data.root`.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError, UsageError

DEFAULT_IGNORE_DIRS: tuple[str, ...] = (
    "default", "real_world", "images", "train", "test", "val", "valid", "validation", "dataset", "data",
)

# A label_map value: one class, a set name, a list of classes (a set label), or None (drop).
LabelTarget = str | list[str] | None


def _on_off(value: Any) -> Any:
    """YAML 1.1 reads unquoted on/off/yes/no/true/false as booleans: give them back their words."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value.strip().lower() if isinstance(value, str) else value


def _cache_on_off(value: Any) -> Any:
    """`data.image_cache`: off, or on (= auto: the size the model needs), or a size in px."""
    value = _on_off(value)
    return "auto" if value == "on" else value


OnOffAuto = Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaxonomyConfig(_Section):
    classes: Literal["master_30"] | list[str] = "master_30"
    bins: Literal["master_30"] | dict[str, list[str]] | None = "master_30"
    sets: dict[str, list[str]] = Field(default_factory=dict)


class SourceConfig(_Section):
    name: str = Field(min_length=1)
    root: str = Field(min_length=1)
    label_map: Literal["identity"] | dict[str, LabelTarget]
    enabled: bool = True
    ignore_dirs: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORE_DIRS))
    exclude: list[str] = Field(default_factory=list)  # globs of paths under root to skip, e.g. 'DATASET/DATASET/**'
    kaggle: str | None = None  # owner/dataset slug that `sustain data download` fetches
    download_dir: str | None = None  # where the archive unpacks (relative to data.root); root lies inside it


class SplitConfig(_Section):
    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)
    # A file of `content_hash,split` rows that fixes every image's split (one crossval fold writes
    # one); null: the seeded, grouped, stratified split above.
    assignment: str | None = None
    # Sources never trained on: their images form the `ood` split, scored at the end beside test.
    holdout_sources: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1.0, got {total:g}")
        return self


class AugmentOptions(_Section):
    """Finer keys that override the `data.augment` preset; null keeps the preset's value."""

    crop_scale_min: float | None = Field(None, gt=0, le=1)
    hflip: float | None = Field(None, ge=0, le=1)
    rand_augment: str | None = None  # timm string such as 'rand-m9-mstd0.5-inc1', or '' for none
    random_erasing: float | None = Field(None, ge=0, le=1)


class DataConfig(_Section):
    root: str = "data"
    sources: list[SourceConfig] = Field(min_length=1)
    split: SplitConfig = Field(default_factory=SplitConfig)
    augment: Literal["strong", "light", "none"] = "strong"
    augment_options: AugmentOptions = Field(default_factory=AugmentOptions)
    num_workers: Literal["auto"] | Annotated[int, Field(ge=0)] = "auto"
    strict: bool = False  # unmapped files are an error
    max_image_pixels: int = Field(89_478_485, gt=0)  # decompression-bomb guard (PIL's default)
    near_duplicate_distance: int = Field(4, ge=0, le=64)  # Hamming bits on a 64-bit pHash
    ingest_workers: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    cache_dir: str | None = None  # decode cache; null: <data.root>/.sustain_cache
    # stored shorter side, px; on (or true) = auto
    image_cache: Annotated[Literal["auto", "off"] | Annotated[int, Field(ge=8)], BeforeValidator(_cache_on_off)] = "auto"

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique, repeated: {dupes}")
        return sources


class ModelConfig(_Section):
    name: str = "eva02_base_patch14_224"
    pretrained: bool | str = True  # true: timm hub; false: random; or a local weights file
    input_size: int | None = Field(None, ge=8)  # null: from the model's pretrained config
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = None
    crop_mode: Literal["center", "squash", "border"] | None = None  # null: the model's pretrained config
    drop_path_rate: float = Field(0.1, ge=0, lt=1)
    grad_checkpointing: bool = False  # never used on MPS
    channels_last: Literal["auto"] | bool = "auto"
    compile: bool = False


class TrainConfig(_Section):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5.0e-5, gt=0)
    early_stopping_patience: int = Field(5, ge=0)  # 0 disables early stopping
    monitor: Literal["val_macro_f1", "val_acc", "val_loss"] = "val_macro_f1"
    optimizer: str = "adamw"
    weight_decay: float = Field(0.05, ge=0)
    layer_decay: float | None = Field(0.8, gt=0, le=1)
    warmup_epochs: float = Field(1.0, ge=0)
    min_lr: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)
    accum_steps: int = Field(1, ge=1)
    ema: bool = False
    ema_decay: float = Field(0.9998, gt=0, lt=1)
    balance: Literal["none", "sampler", "loss_weights"] = "none"
    amp: OnOffAuto = "auto"  # auto: CUDA; bf16 on CPUs with AMX / AVX512-BF16 where the probe agrees; off on MPS
    max_steps_per_epoch: int | None = Field(None, ge=1)  # cap for smoke runs
    checkpoint_every_minutes: float = Field(10.0, ge=0)  # mid-epoch last.pth; 0 turns it off


class GuardConfig(_Section):
    warn_pct: float = Field(5.0, ge=0, le=100)
    critical_pct: float = Field(20.0, ge=0, le=100)
    escalate_after: int = Field(3, ge=1)  # consecutive non-finite steps before each escalation
    # Debug: make the loss / gradient non-finite at these global step indices.
    inject_nonfinite_loss: list[int] = Field(default_factory=list)
    inject_nonfinite_grad: list[int] = Field(default_factory=list)
    # Debug: the process kills itself (SIGKILL) right after saving this epoch's checkpoints (resume tests).
    debug_kill_after_epoch: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> GuardConfig:
        if self.warn_pct > self.critical_pct:
            raise ValueError("warn_pct must not exceed critical_pct")
        return self


class MlflowConfig(_Section):
    enabled: bool = False
    tracking_uri: str | None = None  # null: sqlite:///<output_dir's parent>/mlflow.db; or http(s)://server
    experiment: str = Field("sustain", min_length=1)
    log_weights: bool = False  # also upload best_model.safetensors as an artifact
    parent_run_id: str | None = None  # set by `sustain crossval` for its folds: each is a child run of it

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, uri: str | None) -> str | None:
        from urllib.parse import urlsplit

        if uri and (urlsplit(uri).username or urlsplit(uri).password):  # the config is written to run.json
            raise ValueError("must not hold credentials: set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD "
                             "(or MLFLOW_TRACKING_TOKEN) in the environment instead")
        return uri


class TrackingConfig(_Section):
    tensorboard: bool = True  # event files in output_dir: `tensorboard --logdir <parent>` shows every run
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    log_every_n_steps: int = Field(50, ge=1)  # running loss and throughput


class CalibrationConfig(_Section):
    """Temperature scaling after training (docs/evaluation.md, "Calibration")."""

    # auto: fit T on val (T = 1 when val is too small or the fit does not help); off: T = 1; a number: that T
    temperature: Literal["auto", "off"] | Annotated[float, Field(gt=0, le=100)] = "auto"

    @field_validator("temperature", mode="before")
    @classmethod
    def _bare_off(cls, value: Any) -> Any:
        if value is False:  # YAML reads a bare `off` as False
            return "off"
        if isinstance(value, bool) or (isinstance(value, str) and value not in ("auto", "off")):
            raise ValueError("must be auto, off or a positive number such as 1.5")
        return value


class EvalConfig(_Section):
    # The accuracy accepted predictions must keep (lower bound of its 95% interval on val); null: no decision
    accept_accuracy: Annotated[float, Field(gt=0, lt=1)] | None = None

    @field_validator("accept_accuracy", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool) or isinstance(value, str):
            raise ValueError("must be an accuracy between 0 and 1 such as 0.98, or null to turn the decision off")
        return value


class Config(_Section):
    seed: int = 42
    output_dir: str = "checkpoints"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    taxonomy: TaxonomyConfig = Field(default_factory=TaxonomyConfig)
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    guards: GuardConfig = Field(default_factory=GuardConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def source_root(self, source: SourceConfig) -> Path:
        """Absolute root of a source: relative roots resolve against data.root."""
        root = Path(source.root).expanduser()
        return root if root.is_absolute() else Path(self.data.root).expanduser() / root


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply `key=value` overrides and validate it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"Config file not found: {path}", "check the path, e.g. --config configs/demo.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise UsageError(f"Malformed YAML in {path}{line}: {getattr(exc, 'problem', exc)}",
                         "fix the YAML syntax (indentation, colons, quotes)") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UsageError(f"Config file {path} must hold a mapping of keys, got {type(raw).__name__}")
    return config_from_dict(apply_overrides(raw, overrides))


def config_from_dict(raw: dict[str, Any]) -> Config:
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise _to_config_error(exc, raw) from None
    _check_holdout_sources(cfg)
    return cfg


def _check_holdout_sources(cfg: Config) -> None:
    """`data.split.holdout_sources` names enabled sources, each once, and leaves one to train on."""
    key, held = "data.split.holdout_sources", cfg.data.split.holdout_sources
    names = [s.name for s in cfg.data.sources]
    enabled = [s.name for s in cfg.data.sources if s.enabled]
    unknown = [n for n in held if n not in names]
    if unknown:
        raise ConfigError(key, f"names no source in data.sources: {unknown}", f"source names: {', '.join(names)}")
    repeated = sorted({n for n in held if held.count(n) > 1})
    if repeated:
        raise ConfigError(key, f"repeats {repeated}", "list each held-out source once")
    disabled = [n for n in held if n not in enabled]
    if disabled:
        raise ConfigError(key, f"holds out disabled sources (enabled: false): {disabled}",
                          "enable them, or drop them from the list")
    if held and set(enabled) <= set(held):
        raise ConfigError(key, f"holds out every enabled source ({', '.join(enabled)}): nothing is left to train on",
                          "keep at least one source out of the list")


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of `raw` with each `a.b.c=value` applied; values are parsed as YAML.

    Integer segments index into lists: `data.sources.0.enabled=false`.
    """
    import copy

    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"Bad override {item!r}", "use --set key=value, e.g. --set train.epochs=3")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        node: Any = out
        parts = key.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(".".join(parts[: depth + 1]), f"no list item {part!r} (the list has {len(node)})")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(".".join(parts[:depth]), "is a value, not a section; it has no sub-keys")
    return out


class ConfigErrors(ConfigError):
    """Several config errors, reported together so one edit can fix them all."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__(errors[0].key, "")
        self.errors = errors
        lines = [f"  {i}. {e.message.removeprefix('Config error at ')}" + (f"\n     → {e.hint}" if e.hint else "")
                 for i, e in enumerate(errors, 1)]
        self.message = f"{len(errors)} config errors:\n" + "\n".join(lines)
        self.hint = None


def _to_config_error(exc: ValidationError, raw: dict[str, Any]) -> ConfigError:
    """Every problem pydantic found, one ConfigError each (a union's alternatives count as one)."""
    errors = exc.errors()
    seen: dict[tuple[str, ...], list[dict]] = {}
    for err in errors:
        seen.setdefault(tuple(str(p) for p in err["loc"] if not _is_union_tag(p)), []).append(err)
    found = [_one_config_error(same_key, raw) for same_key in seen.values()]
    return found[0] if len(found) == 1 else ConfigErrors(found)


def _one_config_error(errors: list[dict], raw: dict[str, Any]) -> ConfigError:
    err = errors[0]
    loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
    kind = err["type"]
    if kind == "extra_forbidden":
        key = ".".join(loc)
        parent_model = _model_at(Config, loc[:-1])
        choices = list(parent_model.model_fields) if parent_model else []
        close = difflib.get_close_matches(loc[-1], choices, n=1)
        hint = f"did you mean '{'.'.join(loc[:-1] + [close[0]])}'?" if close else (
            f"valid keys here: {', '.join(choices)}" if choices else None)
        return ConfigError(key, "unknown key", hint)
    if loc and loc[-1].isdigit() and _model_at(Config, loc[:-1]) is None:
        # An item of a fixed-length value (e.g. model.mean): name the value, not the item.
        loc = loc[:-1]
        key = ".".join(loc)
        value = _lookup(raw, loc)
        return ConfigError(key, f"expected a different number or type of items (got {mask_credentials(repr(value))})")
    key = ".".join(loc) or "<root>"
    if kind == "missing":
        return ConfigError(key, "required key is missing", "add it to the config file or pass --set")
    # A value that fits none of a union's members: say what each member wanted.
    same_key = [e for e in errors if [str(p) for p in e["loc"] if not _is_union_tag(p)] == loc]
    messages = list(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in same_key))
    value = err.get("input")
    shown = f" (got {mask_credentials(repr(value))})" if not isinstance(value, (dict, list)) else ""
    return ConfigError(key, f"{' or '.join(messages)}{shown}")


_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s'\"]+@", re.IGNORECASE)


def mask_credentials(text: str) -> str:
    """`http://user:secret@host` → `http://***@host`: an error message must not print a password."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}***@", text)


def _lookup(raw: Any, loc: list[str]) -> Any:
    for part in loc:
        try:
            raw = raw[int(part)] if isinstance(raw, list) else raw[part]
        except (KeyError, IndexError, ValueError, TypeError):
            return None
    return raw


def _is_union_tag(part: Any) -> bool:
    # pydantic puts union member names (e.g. 'list[str]', "literal['auto']") into error locations.
    return isinstance(part, str) and (
        "[" in part or part.startswith("constrained-") or part in {"str", "int", "float", "bool", "none"})


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    """The pydantic model class that sits at a location, e.g. ['data', 'sources', '0']."""
    import typing

    current: Any = model
    for part in loc:
        if part.isdigit():
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        annotation = current.model_fields[part].annotation
        for candidate in [annotation, *typing.get_args(annotation)]:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                current = candidate
                break
            inner = [a for a in typing.get_args(candidate) if isinstance(a, type) and issubclass(a, BaseModel)]
            if inner:
                current = inner[0]
                break
        else:
            current = annotation
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None

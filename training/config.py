"""TrainConfig - the recipe: every knob of a training run, typed, with its default and meaning.

Recipes are TOML files in training/recipes/ validated against these dataclasses (unknown keys and
wrongly typed values are errors that name the key). ``--set key=value`` overrides any field; nested
fields use dots: ``--set augment.rotate=10``, ``--set model.dropout=0.3``. The ``[model]`` table holds
extra keyword arguments for ``create_model`` (checked against the model's signature when it is built).

Recipe choice when none is given: the first that exists of
    <model>_<dataset>, <model>_<kind>, default_<dataset>, default_<kind>
where dataset is digits / fashion_mnist / idx / folder and kind is digits / gray28 / color.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.augment import AugmentConfig
from training.errors import ConfigError

RECIPES_DIR = Path(__file__).parent / "recipes"
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle")
AMP_MODES = ("off", "bf16")


@dataclass
class TrainConfig:
    # --- run
    epochs: int = 30  # passes over the training split
    batch_size: int = 128  # training minibatch size
    eval_batch_size: int = 1000  # minibatch size for validation / test (no grad)
    seed: int = 0  # seeds model init, shuffling, augmentation, dropout, val split
    deterministic: bool = True  # torch.use_deterministic_algorithms(True): bit-repeatable CPU runs
    threads: int = 0  # torch intra-op threads; 0 = all CPU cores this process may use
    channels_last: bool = False  # NHWC memory layout: faster CPU convs for ResNets/MobileNets, not LeNet
    keep_freed_memory: bool = True  # glibc keeps freed buffers instead of unmapping them (~1.2x images/s
    # on CPU; RSS stays at its peak; single-process runs only): allocator.py
    amp: str = "off"  # off | bf16: forward + loss under bfloat16 autocast (weights, optimiser,
    # validation and test stay float32); ~1.7x for ResNet-20 on AMX CPUs
    sync_bn: bool = False  # under torchrun on CUDA: SyncBatchNorm normalises over the whole batch
    # --- optimiser
    optimizer: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9  # SGD momentum (Adam/AdamW: beta1)
    nesterov: bool = True  # Nesterov momentum (SGD only)
    weight_decay: float = 5e-4  # L2 (sgd, adam) or decoupled (adamw) weight decay
    # --- learning-rate schedule (stepped every minibatch)
    schedule: str = "cosine"  # constant | step | cosine | onecycle
    warmup_epochs: float = 0.0  # linear warm-up from lr * warmup_start to lr (constant/step/cosine)
    warmup_start: float = 0.1  # warm-up starting factor
    step_epochs: int = 10  # step schedule: multiply lr by step_gamma every this many epochs
    step_gamma: float = 0.1  # step schedule factor
    min_lr_ratio: float = 0.0  # cosine / onecycle: final lr as a fraction of lr
    onecycle_pct: float = 0.3  # onecycle: fraction of steps spent rising from lr/25 to lr
    # --- loss and regularisation
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    grad_clip: float = 0.0  # clip the global gradient norm to this (0: off)
    early_stop: int = 0  # stop after this many epochs without a better val accuracy (0: off)
    # --- data
    val_fraction: float = 0.1  # share of the training split held out for validation (not digits)
    image_size: int = 32  # folder:DIR images are resized to image_size x image_size
    color_mode: str = "auto"  # folder:DIR: auto (L if every image is grayscale) | L | RGB
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # batched augmentation, see augment.py
    model: dict[str, Any] = field(default_factory=dict)  # extra create_model kwargs (activation, dropout, ...)

    def validate(self) -> TrainConfig:
        """Check value ranges; raise ConfigError naming the key."""

        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"recipe key {key!r}: {what}, got {_get(self, key)!r}")

        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")
        need(self.threads >= 0, "threads", "must be >= 0")
        need(self.amp in AMP_MODES, "amp", f"must be one of {', '.join(AMP_MODES)}")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        need(self.lr > 0, "lr", "must be > 0")
        need(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}")
        need(0 <= self.warmup_epochs <= self.epochs, "warmup_epochs", "must be in [0, epochs]")
        need(0 < self.warmup_start <= 1, "warmup_start", "must be in (0, 1]")
        need(self.step_epochs >= 1, "step_epochs", "must be >= 1")
        need(0 < self.step_gamma <= 1, "step_gamma", "must be in (0, 1]")
        need(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
        need(0 < self.onecycle_pct < 1, "onecycle_pct", "must be in (0, 1)")
        need(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        need(self.grad_clip >= 0, "grad_clip", "must be >= 0")
        need(self.early_stop >= 0, "early_stop", "must be >= 0")
        need(0 < self.val_fraction < 1, "val_fraction", "must be in (0, 1)")
        need(self.image_size >= 8, "image_size", "must be >= 8")
        need(self.color_mode in ("auto", "L", "RGB"), "color_mode", "must be auto, L or RGB")
        a = self.augment
        need(a.crop_padding >= 0, "augment.crop_padding", "must be >= 0")
        need(0 <= a.rotate <= 180, "augment.rotate", "must be in [0, 180] degrees")
        need(0 <= a.translate < 1, "augment.translate", "must be in [0, 1)")
        need(0 <= a.scale < 1, "augment.scale", "must be in [0, 1)")
        need(0 <= a.shear < 90, "augment.shear", "must be in [0, 90) degrees")
        need(a.elastic_alpha >= 0, "augment.elastic_alpha", "must be >= 0 (pixels; 0: off)")
        need(a.elastic_sigma > 0, "augment.elastic_sigma", "must be > 0 (pixels)")
        need(0 <= a.erase_prob <= 1, "augment.erase_prob", "must be in [0, 1]")
        need(0 < a.erase_max_area <= 1, "augment.erase_max_area", "must be in (0, 1]")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg[part] if isinstance(cfg, dict) else getattr(cfg, part)
    return cfg


# ----------------------------------------------------------------------------- dict -> dataclass


def _check_type(key: str, value: Any, tp: Any) -> Any:
    """Coerce/validate one value against a field type; raise ConfigError naming the key."""
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(tp) is dict:
        if isinstance(value, dict):
            return dict(value)
    else:
        raise TypeError(f"unsupported field type {tp}")
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"recipe key {key!r} must be {name}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            raise ConfigError(
                f"unknown recipe key {prefix + k!r}; valid keys: {', '.join(prefix + f for f in sorted(fields))}"
            )
    kwargs = {}
    for k, v in data.items():
        tp = hints[k]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise ConfigError(f"recipe key {prefix + k!r} must be a table, got {v!r}")
            kwargs[k] = _build(tp, v, prefix + k + ".")
        else:
            kwargs[k] = _check_type(prefix + k, v, tp)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build and validate a TrainConfig from a (possibly partial) nested dict."""
    return _build(TrainConfig, data).validate()


# ----------------------------------------------------------------------------- recipes


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def recipe_path(name_or_path: str) -> Path:
    """A recipe name (file stem under training/recipes/) or a path to a TOML file."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists() or "/" in name_or_path:
        if not p.is_file():
            raise ConfigError(f"recipe file {p} does not exist")
        return p
    p = RECIPES_DIR / f"{name_or_path}.toml"
    if not p.is_file():
        raise ConfigError(f"unknown recipe {name_or_path!r}; available: {', '.join(list_recipes())}")
    return p


def load_recipe_dict(name_or_path: str) -> dict[str, Any]:
    p = recipe_path(name_or_path)
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"recipe file {p} is not valid TOML: {e}") from e


def recommended_recipe(model: str, dataset_key: str, kind: str) -> str:
    """The recipe name used when --recipe is not given (see the module docstring)."""
    for name in (f"{model}_{dataset_key}", f"{model}_{kind}", f"default_{dataset_key}", f"default_{kind}"):
        if (RECIPES_DIR / f"{name}.toml").is_file():
            return name
    raise ConfigError(f"no recipe for model {model!r} on {dataset_key} data; pass --recipe")


def parse_override(item: str) -> tuple[str, Any]:
    """ "key=value" -> (key, value); the value is read as a TOML literal, else kept as a string."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = (s.strip() for s in item.split("=", 1))
    if not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply --set items to a nested recipe dict (unknown keys are caught by config_from_dict)."""
    data = json.loads(json.dumps(data))  # deep copy
    hints = typing.get_type_hints(TrainConfig)
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        top = parts[0]
        if top not in hints:
            raise ConfigError(f"unknown recipe key {key!r}; valid keys: {', '.join(sorted(hints))}")
        if len(parts) > 1 and not (dataclasses.is_dataclass(hints[top]) or top == "model"):
            raise ConfigError(f"unknown recipe key {key!r}: {top!r} has no sub-keys")
        if len(parts) > 2:
            raise ConfigError(f"unknown recipe key {key!r}")
        if len(parts) == 1 and hints[top] is str and not isinstance(value, str):
            value = str(value).lower() if isinstance(value, bool) else str(value)
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return data


def resolve_config(recipe: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """Recipe file + --set overrides -> a validated TrainConfig."""
    return config_from_dict(apply_overrides(load_recipe_dict(recipe), list(overrides)))


def recipe_sha256(recipe: dict[str, Any]) -> str:
    """Hex sha256 of the canonical JSON (sorted keys, no spaces) of a recipe dict."""
    blob = json.dumps(recipe, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()

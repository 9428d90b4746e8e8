"""Self-describing checkpoints: everything needed to rebuild, serve, audit and resume a model.

Keys (format_version 1):
    format_version, model_name, model_kwargs, state_dict, labels, input_shape [C, H, W],
    preprocessing {color_mode, height, width, resize, scale, mean, std}, dataset,
    metrics {test_accuracy, val_accuracy, best_epoch, ...}, recipe (the resolved TrainConfig as a dict),
    recipe_name, recipe_sha256, created (ISO-8601 UTC), torch_version,
    and for exact resume: epoch, optimizer, scheduler, rng {torch, generator, numpy, python},
    history (per-epoch metrics), best {val_accuracy, val_loss, epoch}, bad_epochs.
The schema is the ``Checkpoint`` dataclass below (``read_checkpoint`` validates a file against it);
``preprocessing`` is a preprocessing.spec.Preprocessing as a dict (old ones lack ``mode``).
Everything is tensors, numbers, strings, lists and dicts, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import datetime as _dt
import os
import pickle
import random
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from preprocessing.spec import Preprocessing, PreprocessingError, for_dataset, serving_preprocessing
from training.errors import TrainingError

FORMAT_VERSION = 1


class CheckpointError(TrainingError):
    """A file that is missing, unreadable, or not a checkpoint of this format."""


@dataclass
class Checkpoint:
    """The typed view of a checkpoint. On disk it stays a plain dict (``to_dict``), which
    ``torch.load(weights_only=True)`` reads; ``from_dict`` validates one and names what is missing."""

    format_version: int  # FORMAT_VERSION
    model_name: str  # a name of training.models (e.g. "lenet5")
    model_kwargs: dict[str, Any]  # arguments of create_model
    state_dict: dict[str, Any]  # the weights (tensors)
    labels: list[str]  # class names in output index order
    input_shape: list[int]  # [C, H, W]
    preprocessing: Preprocessing  # what turns an image into the model's input (preprocessing.spec)
    dataset: str = ""  # the data spec it was trained on (mnist, digits, idx:DIR, folder:DIR, ...)
    metrics: dict[str, Any] = field(default_factory=dict)  # test_accuracy, val_accuracy, best_epoch, ...
    recipe: dict[str, Any] = field(default_factory=dict)  # the resolved TrainConfig
    recipe_name: str = ""
    recipe_sha256: str = ""
    created: str = ""  # ISO-8601 UTC
    torch_version: str = ""
    resume: dict[str, Any] = field(default_factory=dict)  # epoch, optimizer, scheduler, rng, history, ...
    mode_recorded: bool = False  # whether preprocessing named its `mode` (training leaves it to export)

    REQUIRED: ClassVar[tuple[str, ...]] = (
        "format_version",
        "model_name",
        "model_kwargs",
        "state_dict",
        "labels",
        "input_shape",
        "preprocessing",
    )
    _TYPES: ClassVar[dict[str, tuple[type, ...]]] = {
        "format_version": (int,),
        "model_name": (str,),
        "model_kwargs": (dict,),
        "state_dict": (dict,),
        "labels": (list, tuple),
        "input_shape": (list, tuple),
        "preprocessing": (dict, Preprocessing),
        "dataset": (str,),
        "metrics": (dict,),
        "recipe": (dict,),
        "recipe_name": (str,),
        "recipe_sha256": (str,),
        "created": (str,),
        "torch_version": (str,),
    }

    @classmethod
    def from_dict(cls, raw: Any, where: str = "checkpoint") -> Checkpoint:
        """Validate a loaded checkpoint dict; CheckpointError names every missing key or the bad field."""
        if not isinstance(raw, dict):
            raise CheckpointError(f"{where} is not a training checkpoint (it holds a {type(raw).__name__}, not a dict)")
        missing = [k for k in cls.REQUIRED if k not in raw]
        if missing:
            raise CheckpointError(f"{where} is not a training checkpoint (missing {', '.join(missing)})")
        if raw["format_version"] != FORMAT_VERSION:
            raise CheckpointError(
                f"{where} has format_version {raw['format_version']}, this code reads {FORMAT_VERSION}"
            )
        for key, types in cls._TYPES.items():
            if key in raw and (not isinstance(raw[key], types) or isinstance(raw[key], bool)):
                raise CheckpointError(
                    f"{where}: '{key}' must be {' or '.join(t.__name__ for t in types)}, got {type(raw[key]).__name__}"
                )
        shape = [int(d) for d in raw["input_shape"]]
        if len(shape) != 3 or min(shape) < 1:
            raise CheckpointError(f"{where}: 'input_shape' must be [C, H, W] of positive sizes, got {shape}")
        try:
            pre = Preprocessing.from_dict(raw["preprocessing"], "preprocessing")
        except PreprocessingError as e:
            raise CheckpointError(f"{where}: {e}") from None
        if [pre.channels, pre.height, pre.width] != shape:
            raise CheckpointError(
                f"{where}: 'preprocessing' gives {pre.color_mode} {pre.height}x{pre.width} but 'input_shape' is {shape}"
            )
        names = {f.name for f in fields(cls)} - {"resume", "mode_recorded"}
        kw = {k: raw[k] for k in names if k in raw}
        kw.update(
            labels=[str(x) for x in raw["labels"]],
            input_shape=shape,
            preprocessing=pre,
            mode_recorded=isinstance(raw["preprocessing"], Preprocessing) or "mode" in raw["preprocessing"],
            resume={k: v for k, v in raw.items() if k not in names},
        )
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """The on-disk form (plain types and tensors only)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("resume", "mode_recorded")}
        d["preprocessing"] = self.preprocessing.to_dict()
        if not self.mode_recorded:
            d["preprocessing"].pop("mode")
        return {**d, **self.resume}

    def serving_preprocessing(self) -> Preprocessing:
        """The preprocessing export records and the server applies: the recorded mode, or when none was
        recorded (what training writes) "digit" for digit data and "resize" otherwise."""
        if self.mode_recorded:
            return self.preprocessing
        return serving_preprocessing(
            {k: v for k, v in self.preprocessing.to_dict().items() if k != "mode"}, self.dataset, self.input_shape
        )


def as_checkpoint(ckpt: dict[str, Any] | Checkpoint, where: str = "checkpoint") -> Checkpoint:
    """A Checkpoint from either form (validated when it is a dict)."""
    return ckpt if isinstance(ckpt, Checkpoint) else Checkpoint.from_dict(ckpt, where)


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def preprocessing(color_mode: str, height: int, width: int, mean: list[float], std: list[float]) -> dict:
    """What a server must do to a decoded image before the model sees it (Preprocessing as a dict, without
    `mode`: export picks it from the dataset, see preprocessing.spec.serving_preprocessing)."""
    d = for_dataset(color_mode, height, width, mean, std).to_dict()
    d.pop("mode")
    return d


def save_checkpoint(ckpt: dict[str, Any] | Checkpoint, path: str | os.PathLike) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a torn checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt.to_dict() if isinstance(ckpt, Checkpoint) else ckpt, tmp)
    os.replace(tmp, path)


def _read(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused an object: one line, not torch's advice wall
        m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        why = (
            f"it pickles Python objects ({m.group(1)}), which are not loaded: only tensors, numbers, strings, "
            f"lists and dicts"
            if m
            else "not a PyTorch checkpoint file"
        )
        raise CheckpointError(f"{path} is not a readable checkpoint: {why}") from None
    except Exception as e:  # a torn or foreign file: zipfile, struct, EOF, OS and torch errors
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise CheckpointError(
            f"{path} is not a readable checkpoint: not a PyTorch checkpoint file ({first[:120]})"
        ) from None


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The one loader: read on CPU with ``weights_only=True`` and validate. Raises CheckpointError with a
    one-line message naming the file (and what is missing)."""
    path = Path(path)
    return Checkpoint.from_dict(_read(path), str(path))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """read_checkpoint, as the on-disk dict (what resume code indexes by key)."""
    path = Path(path)
    raw = _read(path)
    Checkpoint.from_dict(raw, str(path))
    return raw


def build_model(ckpt: dict[str, Any] | Checkpoint) -> nn.Module:
    """Rebuild the model a checkpoint describes, weights loaded, in eval mode."""
    from training.models import create_model

    if isinstance(ckpt, Checkpoint):
        name, kwargs, state = ckpt.model_name, ckpt.model_kwargs, ckpt.state_dict
    else:
        name, kwargs, state = ckpt["model_name"], ckpt["model_kwargs"], ckpt["state_dict"]
    model = create_model(name, **kwargs)
    model.load_state_dict(state)
    return model.eval()


# ----------------------------------------------------------------------------- RNG state


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG a run touches, in weights_only-loadable types."""
    np_state = np.random.get_state(legacy=True)
    if not isinstance(np_state, tuple):  # the global RandomState is MT19937: legacy=True gives its tuple form
        raise TypeError(f"numpy's global RNG state is a {type(np_state).__name__}, expected the legacy tuple")
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))

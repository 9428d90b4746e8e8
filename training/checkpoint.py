"""Self-describing checkpoints: everything needed to rebuild, serve, audit and resume a model.

Keys (format_version 1):
    format_version, model_name, model_kwargs, state_dict, labels, input_shape [C, H, W],
    preprocessing {color_mode, height, width, resize, scale, mean, std}, dataset,
    metrics {test_accuracy, val_accuracy, best_epoch, ...}, recipe (the resolved TrainConfig as a dict),
    recipe_name, recipe_sha256, created (ISO-8601 UTC), torch_version,
    and for exact resume: epoch, optimizer, scheduler, rng {torch, generator, numpy, python},
    history (per-epoch metrics), best {val_accuracy, val_loss, epoch}, bad_epochs.
A server applies ``(x * scale - mean) / std`` per channel to a decoded image resized to height x width.
Everything is tensors, numbers, strings, lists and dicts, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import datetime as _dt
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from training.errors import TrainingError

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_name", "model_kwargs", "state_dict", "labels", "input_shape",
                 "preprocessing")


class CheckpointError(TrainingError):
    """A file that is missing, unreadable, or not a checkpoint of this format."""


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def preprocessing(color_mode: str, height: int, width: int, mean: list[float], std: list[float]) -> dict:
    """What a server must do to a decoded image before the model sees it."""
    return {"color_mode": color_mode, "height": height, "width": width, "resize": "bilinear",
            "scale": 1.0 / 255.0, "mean": list(mean), "std": list(std)}


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a torn checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint on CPU with ``weights_only=True``. Raises CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        why = next((ln for ln in lines if "WeightsUnpickler error" in ln), lines[0])
        raise CheckpointError(f"{path} is not a readable checkpoint: {why}") from e
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        raise CheckpointError(f"{path} is not a training checkpoint (missing {', '.join(missing)})")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {ckpt['format_version']}, "
                              f"this code reads {FORMAT_VERSION}")
    return ckpt


def build_model(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint describes, weights loaded, in eval mode."""
    from training.models import create_model

    model = create_model(ckpt["model_name"], **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


# ----------------------------------------------------------------------------- RNG state

def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG a run touches, in weights_only-loadable types."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))

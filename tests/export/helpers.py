"""Checkpoints for the export tests: real digits data, models built by the training registry.

`random_checkpoint`: randomly initialised weights made well-conditioned on real training images
(export.compare.condition_model: an LSUV-style pass scales every conv/linear layer to unit output
variance, BatchNorm statistics are recalibrated and the logits spread to a trained model's range). A
raw init gives logits of 1e2 or 1e-9 that barely depend on the image, which would make a parity test
vacuous. `trained_checkpoint`: LeNet-5 trained for a few epochs with a plain Adam loop (seconds), good
enough that accuracy numbers mean something (about 0.9 on the digits test split).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from export.compare import condition_model
from training.augment import Normalize
from training.checkpoint import FORMAT_VERSION, preprocessing, save_checkpoint, utc_now
from training.data import Dataset
from training.models import create_model


def model_kwargs(name: str, data: Dataset, input_size: int | None = None) -> dict:
    c, h, _ = data.input_shape
    return {"num_classes": len(data.labels), "in_channels": c, "input_size": input_size or h}


def checkpoint_dict(name: str, model: nn.Module, kwargs: dict, data: Dataset, metrics: dict | None = None) -> dict:
    c = data.input_shape[0]
    h = w = kwargs["input_size"]  # the model's size; export resizes the dataset's images to it
    mean, std = data.mean_std()
    recipe = {"seed": 0, "epochs": 0, "note": "tests/export"}
    return {
        "format_version": FORMAT_VERSION,
        "model_name": name,
        "model_kwargs": kwargs,
        "state_dict": model.state_dict(),
        "labels": list(data.labels),
        "input_shape": [c, h, w],
        "preprocessing": preprocessing(data.color_mode, h, w, mean, std),
        "dataset": data.name,
        "metrics": metrics or {},
        "recipe": recipe,
        "recipe_name": "",
        "recipe_sha256": "0" * 64,
        "created": utc_now(),
        "torch_version": str(torch.__version__),
    }


def random_checkpoint(name: str, data: Dataset, path: Path, seed: int = 0, input_size: int | None = None) -> Path:
    torch.manual_seed(seed)
    kwargs = model_kwargs(name, data, input_size)
    model = create_model(name, **kwargs)
    mean, std = data.mean_std()
    x = Normalize(mean, std)(data.train_x[:128])
    if x.shape[-1] != kwargs["input_size"]:
        x = nn.functional.interpolate(x, size=(kwargs["input_size"],) * 2, mode="bilinear", antialias=True)
    condition_model(model, x)
    save_checkpoint(checkpoint_dict(name, model, kwargs, data), path)
    return path


def trained_checkpoint(data: Dataset, path: Path, epochs: int = 4, name: str = "lenet5") -> Path:
    torch.manual_seed(0)
    kwargs = model_kwargs(name, data)
    model = create_model(name, **kwargs)
    mean, std = data.mean_std()
    norm = Normalize(mean, std)
    x, y = norm(data.train_x), data.train_y
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(norm(data.test_x)).argmax(1) == data.test_y).float().mean())
    save_checkpoint(checkpoint_dict(name, model, kwargs, data, {"test_accuracy": acc}), path)
    return path

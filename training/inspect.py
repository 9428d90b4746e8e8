"""Feature maps of every convolution stage for one image (``cnn inspect CKPT IMAGE --out PNG``).

A model lists its stages as submodule names in ``model.stages`` (e.g. LeNet-5: conv1, conv2; ResNet:
stem, layers.0, ...); a model without that attribute shows every Conv2d. Forward hooks catch the
outputs in one forward pass. The image is prepared by preprocessing.image.to_model_input with the
preprocessing the model is served with (Checkpoint.serving_preprocessing: the digit normalisation for
digit data, else colour conversion and resize), then x * scale, (x - mean) / std: what the server does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from preprocessing.spec import Preprocessing
from training.checkpoint import build_model, read_checkpoint
from training.errors import DataError


def feature_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    names = getattr(model, "stages", None)
    if names:
        modules = dict(model.named_modules())
        return [(n, modules[n]) for n in names]
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def load_image(path: str | os.PathLike, pre: Preprocessing | dict[str, Any]) -> tuple[np.ndarray, torch.Tensor]:
    """-> (the prepared image as float [0, 1] (H, W) or (H, W, 3), the model input (1, C, H, W))."""
    from PIL import Image, UnidentifiedImageError

    from preprocessing.image import ImageModeError, geometry, normalise

    pre = pre if isinstance(pre, Preprocessing) else Preprocessing.from_dict(pre)
    try:
        with Image.open(path) as im:
            im.load()
            a = geometry(im, pre)  # uint8 (H, W) or (H, W, 3)
    except (OSError, UnidentifiedImageError, ImageModeError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    return a.astype(np.float32) / 255.0, torch.from_numpy(normalise(a, pre)).unsqueeze(0)


@torch.no_grad()
def feature_maps(model: nn.Module, x: torch.Tensor) -> tuple[list[tuple[str, torch.Tensor]], torch.Tensor]:
    """Run x (1, C, H, W) through the model; -> ([(stage, maps (C', h, w))], logits (1, K))."""
    caught: list[tuple[str, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o, n=n: caught.append((n, o[0].detach().clone())))
        for n, m in feature_stages(model)
    ]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return caught, logits


def inspect_image(
    ckpt_path: str | os.PathLike, image_path: str | os.PathLike, out_path: str | os.PathLike, max_channels: int = 16
) -> dict[str, Any]:
    """Write the feature-map grid PNG; return the prediction."""
    from training.report import plot_feature_maps

    ckpt = read_checkpoint(ckpt_path)
    model = build_model(ckpt)
    if not Path(image_path).is_file():
        raise DataError(f"image {image_path} does not exist")
    image, x = load_image(image_path, ckpt.serving_preprocessing())
    maps, logits = feature_maps(model, x)
    probs = logits.softmax(1)[0]
    k = int(probs.argmax())
    label = ckpt.labels[k]
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    plot_feature_maps(
        image,
        [(n, m.numpy()) for n, m in maps],
        out_path,
        max_channels=max_channels,
        title=f"{ckpt.model_name}: {Path(image_path).name} -> {label} ({float(probs[k]):.1%})",
    )
    return {"label": label, "index": k, "probability": float(probs[k]), "stages": [n for n, _ in maps]}

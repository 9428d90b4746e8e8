"""The shipped photo/scan set (examples/photos, MNIST test digits on synthetic paper) through the
server's Classification preprocessing (decode + mode "digit"), with the LeNet-5 that conftest trains in
3 epochs (99.1 % on MNIST test; 96.7 % on the photos when measured): >= 95 % here. The issue's target,
>= 97 % with the default model (training/recipes/lenet5_mnist.toml, 12 epochs), is a model-quality
figure this quick model cannot hold with margin (98.0 % measured with that recipe's checkpoint).
The plain resize the server used before stays near chance on the same images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from preprocessing.spec import Preprocessing
from server.imaging import ImageLimits, decode, to_model_input
from tests.preprocessing.mnist_model import MEAN, STD

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"


def _accuracy(model, pre: Preprocessing) -> tuple[float, list[str]]:
    files = sorted(PHOTOS.glob("*.jpg"))
    assert len(files) >= 200, f"examples/photos holds {len(files)} images; regenerate with its generate.py"
    x = np.stack(
        [
            to_model_input(decode(f.read_bytes(), f.name, ImageLimits()), pre, np.dtype(np.float32), f.name)
            for f in files
        ]
    )
    labels = np.array([int(f.stem.split("_")[1]) for f in files])
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == labels).mean()), [f"{f.name}->{p}" for f, p, y in zip(files, pred, labels) if p != y]


def test_photos_through_digit_preprocessing(mnist_lenet5):
    model, mnist_acc, _ = mnist_lenet5
    assert mnist_acc >= 0.985, f"the test model is weak: {mnist_acc:.4f} on the MNIST test set"
    acc, wrong = _accuracy(model, Preprocessing(mode="digit", mean=[MEAN], std=[STD]).validate())
    print(f"photos: {acc:.2%} (MNIST test {mnist_acc:.2%}); wrong: {wrong}")
    assert acc >= 0.95, f"{acc:.2%} of the photos classified correctly; wrong: {wrong}"


def test_plain_resize_fails_on_the_same_photos(mnist_lenet5):
    """Why the digit mode exists: the whole frame resized to 28x28, dark ink on light paper."""
    model, _, _ = mnist_lenet5
    acc, _ = _accuracy(model, Preprocessing(mode="resize", mean=[MEAN], std=[STD]).validate())
    assert acc < 0.3

"""A LeNet-5 trained on the shipped MNIST in about a minute of one core, for the photo accuracy test.

The default recipe's model and distortions (training/recipes/lenet5_mnist.toml: batch norm, Simard
elastic distortions, rotation, shear, scale, shift through training.augment.random_warp; SGD one-cycle,
label smoothing) for EPOCHS epochs instead of 12; mean/std 0.1307/0.3081. Saved as a checkpoint of this project's
format so that `cnn inspect` and `cnn export` can read it. Run as a script to train one by hand:
    python -m tests.preprocessing.mnist_model OUT.pt
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MEAN, STD = 0.1307, 0.3081


EPOCHS = 3
MODEL_KWARGS = {"batch_norm": True}
WARP = {"degrees": 8.0, "shear": 8.0, "scale": 0.08, "translate": 0.06, "elastic_alpha": 34.0, "elastic_sigma": 4.0}


def train(epochs: int = EPOCHS, seed: int = 0, log=print) -> tuple[torch.nn.Module, float]:
    """-> (LeNet-5 in eval mode, MNIST test accuracy)."""
    from training.augment import random_warp
    from training.data import load_mnist
    from training.models import create_model

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this net is too small to split; one thread is as fast and far faster when busy
    data = load_mnist()
    x = torch.cat([data.train_x, data.val_x]).float().div_(255)
    y = torch.cat([data.train_y, data.val_y])
    model = create_model("lenet5", **MODEL_KWARGS)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(x) / 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=g).split(128):
            xb = (random_warp(x[idx], g, **WARP) - MEAN) / STD
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        log(f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f} {time.perf_counter() - t0:.0f}s")
    model.eval()
    with torch.no_grad():
        xt = (data.test_x.float().div_(255) - MEAN) / STD
        acc = float((model(xt).argmax(1) == data.test_y).float().mean())
    torch.set_num_threads(threads)
    return model, acc


def save(model: torch.nn.Module, path: str | Path, test_accuracy: float) -> None:
    from training.checkpoint import FORMAT_VERSION, preprocessing, save_checkpoint, utc_now

    save_checkpoint(
        {
            "format_version": FORMAT_VERSION,
            "model_name": "lenet5",
            "model_kwargs": dict(MODEL_KWARGS),
            "state_dict": model.state_dict(),
            "labels": [str(i) for i in range(10)],
            "input_shape": [1, 28, 28],
            "preprocessing": preprocessing("L", 28, 28, [MEAN], [STD]),
            "dataset": "mnist",
            "metrics": {"test_accuracy": test_accuracy},
            "created": utc_now(),
        },
        path,
    )


def logits(model: torch.nn.Module, x_uint8: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) MNIST-style fields -> logits (N, 10)."""
    with torch.no_grad():
        xb = (torch.from_numpy(np.ascontiguousarray(x_uint8)).float().div_(255).unsqueeze(1) - MEAN) / STD
        return model(xb).numpy()


if __name__ == "__main__":
    m, a = train()
    print(f"MNIST test accuracy {a:.4f}")
    save(m, sys.argv[1] if len(sys.argv) > 1 else "/tmp/lenet5-mnist.pt", a)

"""A LeNet-5 trained on the shipped MNIST once per test session (tests/preprocessing/mnist_model.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mnist_lenet5(tmp_path_factory):
    """(model in eval mode, its MNIST test accuracy, checkpoint path). CNN_TEST_MNIST_CKPT reuses a
    checkpoint written by `python -m tests.preprocessing.mnist_model OUT.pt` (local iteration only)."""
    from tests.preprocessing import mnist_model
    from training.checkpoint import build_model, read_checkpoint

    reuse = os.environ.get("CNN_TEST_MNIST_CKPT")
    if reuse:
        ck = read_checkpoint(reuse)
        return build_model(ck), float(ck.metrics["test_accuracy"]), Path(reuse)
    model, acc = mnist_model.train()
    path = tmp_path_factory.mktemp("mnist") / "lenet5-mnist.pt"
    mnist_model.save(model, path, acc)
    return model, acc, path

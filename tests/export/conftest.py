"""Fixtures for the export tests: real digits data, checkpoints made in seconds, exports cached per run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.export.helpers import random_checkpoint, trained_checkpoint

# Inputs as small as the model allows on the 28x28 digits; GoogLeNet keeps full resolution through its
# first Inception stages, so it gets 16x16 (the exporter's verification resizes the test images).
INPUT_SIZE = {"googlenet": 16}
# Keep the suite to a few minutes on 2 shared cores: fewer verification images than the CLI defaults.
FAST = {"parity_images": 32, "eval_images": 64, "max_batch_size": 8}


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    from training.data import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def trained_lenet5(digits, tmp_path_factory) -> Path:
    """LeNet-5 trained for a few epochs on the digits (about 3 s)."""
    return trained_checkpoint(digits, tmp_path_factory.mktemp("ckpt") / "best.pt")


@pytest.fixture(scope="session")
def checkpoint_for(digits, tmp_path_factory):
    """checkpoint_for(model_name) -> path of a well-conditioned random-init checkpoint (cached)."""
    cache: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("ckpts")

    def make(name: str) -> Path:
        if name not in cache:
            cache[name] = random_checkpoint(name, digits, root / f"{name}.pt", input_size=INPUT_SIZE.get(name))
        return cache[name]

    return make


@pytest.fixture(scope="session")
def exported(checkpoint_for, tmp_path_factory):
    """exported(model_name) -> ExportResult of `export_checkpoint` into a session repository (cached)."""
    from export.pipeline import export_checkpoint

    cache = {}
    repo = tmp_path_factory.mktemp("repo")

    def get(name: str):
        if name not in cache:
            cache[name] = export_checkpoint(checkpoint_for(name), repo, **FAST)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def lenet5_published(trained_lenet5, tmp_path_factory):
    """The trained LeNet-5 exported once (fp32) with the CLI defaults, into its own repository."""
    from export.pipeline import export_checkpoint

    repo = tmp_path_factory.mktemp("lenet-repo")
    return export_checkpoint(trained_lenet5, repo)

"""Shared helpers: write real IDX files and image folders, small and fast."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

# One intra-op thread: the suite shares 2 cores with other work, where OpenMP barriers stall badly.
torch.set_num_threads(1)

IDX_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}


def idx_bytes(a: np.ndarray) -> bytes:
    """Serialise an array in IDX format: 0, 0, dtype code, ndim, big-endian dims, big-endian data."""
    dt = a.dtype if a.dtype.itemsize == 1 else a.dtype.newbyteorder(">")
    header = bytes([0, 0, IDX_CODES[np.dtype(dt)], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(dt).tobytes()


def write_idx(path: Path, a: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(a)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_idx_dir(
    root: Path, n_train: int = 200, n_test: int = 50, size: int = 28, classes: int = 10, gz: bool = False, seed: int = 0
) -> tuple[Path, dict[str, np.ndarray]]:
    """A MNIST-layout directory of class-dependent images (class k: a bright bar at row 2k)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = (np.arange(n) % classes).astype(np.uint8)
        rng.shuffle(y)
        x = rng.integers(0, 40, size=(n, size, size), dtype=np.uint8)
        for k in range(classes):
            x[y == k, (2 * k) % size, :] = 255
        write_idx(root / f"{split}-images-idx3-ubyte", x, gz)
        write_idx(root / f"{split}-labels-idx1-ubyte", y, gz)
        arrays[f"{split}_x"], arrays[f"{split}_y"] = x, y
    return root, arrays


def make_folder(
    root: Path,
    classes=("cat", "dog", "frog"),
    per_class: int = 12,
    mode: str = "RGB",
    sizes=((40, 30), (24, 24), (33, 50)),
) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            shape = (h, w) if mode == "L" else (h, w, 3)
            a = rng.integers(0, 255, size=shape, dtype=np.uint8)
            ext = ".png" if i % 2 else ".jpg"
            Image.fromarray(a, mode).save(d / f"img{i}{ext}")
    return root


@pytest.fixture
def idx_dir(tmp_path):
    return make_idx_dir(tmp_path / "idx")


def assert_same_run(a: dict, b: dict, epochs: int) -> None:
    """Two checkpoints of one run (say, straight and interrupted + resumed) are bit-identical: weights,
    momentum, RNG and the per-epoch history except the timing columns."""
    assert a["epoch"] == b["epoch"] == epochs
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])
    strip = ("images_per_s", "epoch_seconds")
    ha = [{k: v for k, v in r.items() if k not in strip} for r in a["history"]]
    hb = [{k: v for k, v in r.items() if k not in strip} for r in b["history"]]
    assert ha == hb

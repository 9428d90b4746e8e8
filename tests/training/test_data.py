"""Dataset loaders: digits, real IDX files (gzipped or not), fashion-mnist location, folder layout."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from training import data as data_mod
from training.data import load_dataset, read_idx, stratified_split
from training.errors import DataError

from .conftest import idx_bytes, make_folder, make_idx_dir, write_idx


def test_digits_are_mnist_style():
    d = load_dataset("digits")
    assert d.labels == [str(i) for i in range(10)]
    assert d.input_shape == [1, 28, 28] and d.color_mode == "L"
    for x in (d.train_x, d.val_x, d.test_x):
        assert x.dtype == torch.uint8
        # white digit on black, centred in a 4-pixel black border (20x20 digit in a 28x28 canvas)
        assert x[:, :, :4].max() == 0 and x[:, :, -4:].max() == 0
        assert x[:, :, :, :4].max() == 0 and x[:, :, :, -4:].max() == 0
        assert x.max() == 255
    # 1797 images, stratified ~70/10/20, disjoint
    n = len(d.train_y) + len(d.val_y) + len(d.test_y)
    assert n == 1797
    assert abs(len(d.test_y) / n - 0.2) < 0.01 and abs(len(d.val_y) / n - 0.1) < 0.01
    total = torch.bincount(torch.cat([d.train_y, d.val_y, d.test_y]), minlength=10)
    for y, frac in ((d.train_y, 0.7), (d.val_y, 0.1), (d.test_y, 0.2)):  # stratified: each class in proportion
        counts = torch.bincount(y, minlength=10)
        assert ((counts - frac * total).abs() <= 1).all()
    tr, va, te = data_mod.digits_split_indices()
    assert not set(tr) & set(te) and not set(va) & set(te) and not set(tr) & set(va)


def test_digits_split_is_fixed_whatever_the_training_seed():
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=123)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.val_y, b.val_y)


def test_digits_pixels_follow_the_recipe():
    from sklearn.datasets import load_digits

    x, y = data_mod.digits_images()
    raw = load_digits().images[0]  # 8x8 in 0..16
    img = x[0, 0].float()
    assert y[0] == 0
    # the 8x8 ink pattern survives: the brightest 20x20 region matches the upsampled raw digit
    up = torch.nn.functional.interpolate(
        torch.tensor(raw * 255 / 16).float()[None, None], size=(20, 20), mode="bilinear", antialias=True
    )[0, 0]
    assert torch.allclose(img[4:24, 4:24], up.round().clamp(0, 255), atol=1)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_loads(tmp_path, gz):
    root, arrays = make_idx_dir(tmp_path / "mnist", n_train=100, n_test=30, gz=gz)
    d = load_dataset(f"idx:{root}", val_fraction=0.2, seed=1)
    assert d.labels == [str(i) for i in range(10)]
    assert d.input_shape == [1, 28, 28] and d.train_x.dtype == torch.uint8
    assert len(d.train_y) == 80 and len(d.val_y) == 20
    assert torch.equal(d.test_x[:, 0], torch.from_numpy(arrays["t10k_x"]))
    assert torch.equal(d.test_y, torch.from_numpy(arrays["t10k_y"].astype(np.int64)))
    # train + val together are exactly the training file, nothing lost or duplicated
    both = torch.cat([d.train_x, d.val_x])[:, 0].reshape(100, -1)
    want = torch.from_numpy(arrays["train_x"]).reshape(100, -1)
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, want.tolist()))


def test_idx_labels_file_and_alternative_names(tmp_path):
    root = tmp_path / "kmnist"
    root.mkdir()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (20, 28, 28), dtype=np.uint8)
    y = (np.arange(20) % 3).astype(np.uint8)
    write_idx(root / "kmnist-train-imgs-idx3-ubyte", x, gz=True)  # KMNIST-style names
    write_idx(root / "kmnist-train-labels-idx1-ubyte", y, gz=True)
    write_idx(root / "t10k-images.idx3-ubyte", x[:6])  # dotted MNIST-mirror names
    write_idx(root / "t10k-labels.idx1-ubyte", y[:6])
    (root / "labels.txt").write_text("o\nki\nsu\n")
    d = load_dataset(f"idx:{root}")
    assert d.labels == ["o", "ki", "su"]
    assert len(d.test_y) == 6


def test_read_idx_parses_the_header_generically(tmp_path):
    for arr in (
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.arange(-5, 5, dtype=np.int8),
        np.arange(6, dtype=">i4").reshape(3, 2),
        np.linspace(0, 1, 5).astype(">f4"),
        np.arange(4, dtype=">i2"),
        np.array([1.5, -2.0], dtype=">f8"),
    ):
        p = tmp_path / "a.idx"
        p.write_bytes(idx_bytes(arr))
        got = read_idx(p)
        assert got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)
        p.write_bytes(gzip.compress(idx_bytes(arr)))
        np.testing.assert_array_equal(read_idx(p), arr)


def test_bad_idx_files_give_clear_errors(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(p)
    p.write_bytes(idx_bytes(np.zeros((4, 2, 2), np.uint8))[:-3])
    with pytest.raises(DataError, match="header says"):
        read_idx(p)
    root, _ = make_idx_dir(tmp_path / "m", n_train=20, n_test=10)
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(19, np.uint8))
    with pytest.raises(DataError, match="20 images but .* 19 labels"):
        load_dataset(f"idx:{root}")


def test_missing_data_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=str(missing)):
        load_dataset(f"idx:{missing}")
    with pytest.raises(DataError, match=str(missing)):
        load_dataset(f"folder:{missing}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train images IDX file"):
        load_dataset(f"idx:{tmp_path / 'empty'}")
    with pytest.raises(DataError, match="unknown data 'kmnist'; expected mnist, digits"):  # mnist is a spec now
        load_dataset("kmnist")


def test_fashion_mnist_location_and_class_names(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion-mnist")
    root, _ = make_idx_dir(tmp_path / "fm", n_train=50, n_test=20, gz=True)
    monkeypatch.setattr(data_mod, "FASHION_MNIST_DIR", str(root))
    d = load_dataset("fashion-mnist")
    assert d.labels[0] == "T-shirt/top" and d.labels[9] == "Ankle boot" and len(d.labels) == 10
    assert d.name == "fashion-mnist"


def test_folder_layout_colour_any_size(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=10)
    d = load_dataset(f"folder:{root}", image_size=24, val_fraction=0.25)
    assert d.labels == ["cat", "dog", "frog"]
    assert d.input_shape == [3, 24, 24] and d.color_mode == "RGB"
    assert len(d.train_y) + len(d.val_y) + len(d.test_y) == 30
    assert len(d.test_y) == 6  # 20 % stratified: 2 per class
    assert torch.bincount(d.test_y).tolist() == [2, 2, 2]


def test_folder_grayscale_and_presplit(tmp_path):
    root = tmp_path / "g"
    make_folder(root / "train", classes=("a", "b"), per_class=8, mode="L")
    make_folder(root / "test", classes=("b",), per_class=3, mode="L")
    d = load_dataset(f"folder:{root}", image_size=16)
    assert d.input_shape == [1, 16, 16] and d.color_mode == "L"
    assert d.labels == ["a", "b"]
    assert d.test_y.tolist() == [1, 1, 1]  # test class names map to the training indices


def test_folder_errors(tmp_path):
    (tmp_path / "x" / "empty_class").mkdir(parents=True)
    with pytest.raises(DataError, match="empty_class has no PNG/JPEG"):
        load_dataset(f"folder:{tmp_path / 'x'}", color_mode="L")
    (tmp_path / "y").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(f"folder:{tmp_path / 'y'}")
    bad = tmp_path / "z" / "c"
    bad.mkdir(parents=True)
    (bad / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset(f"folder:{tmp_path / 'z'}", color_mode="RGB")


def test_stratified_split_is_seeded_and_complete():
    y = np.repeat(np.arange(4), 25)
    a = stratified_split(y, [0.6, 0.2, 0.2], seed=3)
    b = stratified_split(y, [0.6, 0.2, 0.2], seed=3)
    c = stratified_split(y, [0.6, 0.2, 0.2], seed=4)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[1], c[1])
    assert sorted(np.concatenate(a).tolist()) == list(range(100))
    assert [len(p) for p in a] == [60, 20, 20]
    assert np.bincount(y[a[1]]).tolist() == [5, 5, 5, 5]


@pytest.mark.parametrize("data,width", [("digits", 4), ("mnist", 5)])
def test_examples_are_held_out_test_images(data, width):
    """examples/<data>/<label>_<index>.png are exactly the test split's images (never trained on)."""
    from pathlib import Path

    from PIL import Image

    folder = Path(__file__).resolve().parents[2] / "examples" / data
    files = sorted(folder.glob("*.png"))
    assert len(files) >= 10
    d = load_dataset(data)
    seen = set()
    for f in files:
        label, index = f.stem.split("_")
        assert len(index) == width
        a = np.asarray(Image.open(f))
        assert a.dtype == np.uint8 and a.shape == (28, 28)
        assert np.array_equal(a, d.test_x[int(index), 0].numpy()), f.name
        assert d.labels[int(d.test_y[int(index)])] == label, f.name
        seen.add(label)
    assert seen == {str(i) for i in range(10)}

"""The shipped MNIST: files present with their published MD5s, the standard split (55,000 / 5,000 / 10,000,
no test digit among the training or validation digits), and precise errors for missing or corrupt files."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from training import data as data_mod
from training.config import recommended_recipe
from training.data import MNIST_MD5, data_kind, dataset_key, load_dataset, verify_mnist
from training.errors import DataError


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


def test_shipped_files_have_the_published_md5s_and_licence():
    d = data_mod.MNIST_DIR
    for name, md5 in MNIST_MD5.items():
        assert hashlib.md5((d / name).read_bytes()).hexdigest() == md5
    readme = (d / "README.md").read_text()
    assert "CC BY-SA 3.0" in readme and "LeCun" in readme
    assert "Attribution-ShareAlike 3.0" in (d / "LICENSE-CC-BY-SA-3.0.txt").read_text()


def test_standard_split(mnist):
    assert mnist.labels == [str(i) for i in range(10)] and mnist.input_shape == [1, 28, 28]
    assert (len(mnist.train_y), len(mnist.val_y), len(mnist.test_y)) == (55000, 5000, 10000)
    for x in (mnist.train_x, mnist.val_x, mnist.test_x):
        assert x.dtype == torch.uint8 and x.max() == 255 and x.min() == 0
    # every class is in every split; validation is the tail of the official training file
    for y in (mnist.train_y, mnist.val_y, mnist.test_y):
        assert (torch.bincount(y, minlength=10) > 300).all()
    full, _ = data_mod.load_idx_split(data_mod.MNIST_DIR, "train")
    assert torch.equal(torch.cat([mnist.train_x, mnist.val_x]), full)
    # the split does not move with the seed
    other = load_dataset("mnist", seed=7, val_fraction=0.3)
    assert torch.equal(other.val_x, mnist.val_x) and torch.equal(other.test_y, mnist.test_y)


def test_no_test_digit_is_trained_or_validated_on(mnist):
    def keys(x):
        return {hashlib.blake2b(row.numpy().tobytes(), digest_size=16).digest() for row in x.reshape(len(x), -1)}

    test = keys(mnist.test_x)
    assert not test & keys(mnist.val_x)
    assert not test & keys(mnist.train_x)
    assert not keys(mnist.val_x) & keys(mnist.train_x)


def test_mnist_is_gray28_with_its_own_recipes():
    assert data_kind("mnist") == "gray28" and dataset_key("mnist") == "mnist"
    assert recommended_recipe("lenet5", "mnist", "gray28") == "lenet5_mnist"
    assert recommended_recipe("resnet20", "mnist", "gray28") == "resnet20_mnist"
    assert recommended_recipe("vgg11_bn", "mnist", "gray28") == "default_mnist"


def _copy(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    for name in MNIST_MD5:
        shutil.copyfile(data_mod.MNIST_DIR / name, d / name)
    return d


def test_missing_file_is_named(tmp_path, monkeypatch):
    d = _copy(tmp_path)
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("CNN_MNIST_DIR", str(d))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is missing.*git checkout -- data/mnist"):
        load_dataset("mnist")


def test_corrupt_file_is_named_with_both_sums(tmp_path, monkeypatch):
    d = _copy(tmp_path)
    p = d / "train-labels-idx1-ubyte.gz"
    raw = bytearray(p.read_bytes())
    raw[-20] ^= 0xFF  # one flipped byte inside the compressed stream
    p.write_bytes(bytes(raw))
    got = hashlib.md5(bytes(raw)).hexdigest()
    monkeypatch.setenv("CNN_MNIST_DIR", str(d))
    with pytest.raises(
        DataError,
        match=rf"train-labels-idx1-ubyte.gz is corrupt \(MD5 {got}, expected "
        rf"{MNIST_MD5['train-labels-idx1-ubyte.gz']}",
    ):
        load_dataset("mnist")
    # an intact copy elsewhere passes, and the check is cached per file (path, size, mtime)
    assert verify_mnist(data_mod.MNIST_DIR) == data_mod.MNIST_DIR
    assert any(k[0].endswith("train-images-idx3-ubyte.gz") for k in data_mod._verified)

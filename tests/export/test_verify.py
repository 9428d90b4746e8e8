"""The gate's file checks: corrupted and truncated files, and external data that escapes its folder,
each fail with a message that names the file."""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.errors import VerificationError
from export.listing import read_metadata_props, read_model_metadata
from export.verify import check_file
from server.errors import RepositoryError


@pytest.fixture
def version_dir(lenet5_published, tmp_path):
    d = tmp_path / "repo" / "m" / "1"
    d.mkdir(parents=True)
    shutil.copy(lenet5_published.path, d / "model.onnx")
    return d


def test_valid_file_passes(version_dir):
    assert check_file(version_dir / "model.onnx") == []  # embedded weights: no external locations
    assert read_model_metadata(version_dir / "model.onnx").model_name == "lenet5"


@pytest.mark.parametrize("damage", ["random bytes", "truncated", "empty", "text"])
def test_damaged_file_names_itself(version_dir, damage):
    path = version_dir / "model.onnx"
    data = path.read_bytes()
    if damage == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("this is not a model\n")
    with pytest.raises(VerificationError) as e:
        check_file(path)
    assert str(path) in str(e.value) and "not a valid ONNX model" in str(e.value)
    with pytest.raises(RepositoryError) as e2:  # the torch- and onnx-free reader used by `models list`
        read_metadata_props(path)
    assert str(path) in str(e2.value)


def _externalise(version_dir):
    """Rewrite model.onnx with its weights in model.onnx.data (a valid pair; tensors under 1 KiB, such as
    Reshape's shape, stay inline as the exporters do: the checker's shape inference must read them)."""
    path = version_dir / "model.onnx"
    model = onnx.load(str(path))
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=1024,
    )
    return path


def _relocate(path, location):
    model = onnx.load(str(path), load_external_data=False)
    n = 0
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
                n += 1
    assert n > 0
    onnx.save_model(model, str(path))


def test_external_data_inside_the_folder_is_fine(version_dir):
    path = _externalise(version_dir)
    assert check_file(path) == ["model.onnx.data"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((2, 1, 28, 28), np.float32)})[0].shape == (2, 10)


def test_external_data_dotdot_escape(version_dir):
    path = _externalise(version_dir)
    shutil.copy(version_dir / "model.onnx.data", version_dir.parent / "x")  # the target exists: only the path is wrong
    _relocate(path, "../x")
    with pytest.raises(VerificationError, match=r"escapes the model folder") as e:
        check_file(path)
    assert str(path) in str(e.value) and "'../x'" in str(e.value)


def test_external_data_absolute_path(version_dir, tmp_path):
    path = _externalise(version_dir)
    outside = tmp_path / "outside.data"
    shutil.copy(version_dir / "model.onnx.data", outside)
    _relocate(path, str(outside))
    with pytest.raises(VerificationError, match=r"is absolute") as e:
        check_file(path)
    assert str(path) in str(e.value)


def test_external_data_symlink_out(version_dir, tmp_path):
    path = _externalise(version_dir)
    outside = tmp_path / "outside.data"
    shutil.move(version_dir / "model.onnx.data", outside)
    os.symlink(outside, version_dir / "model.onnx.data")  # the name is inside, the bytes are not
    with pytest.raises(VerificationError, match=r"escapes the model folder") as e:
        check_file(path)
    assert str(path) in str(e.value)


def test_external_data_missing(version_dir):
    path = _externalise(version_dir)
    os.remove(version_dir / "model.onnx.data")
    with pytest.raises(VerificationError, match=r"external data file 'model.onnx.data' is missing") as e:
        check_file(path)
    assert str(path) in str(e.value)


def test_checker_failure_names_the_file(version_dir):
    path = version_dir / "model.onnx"
    model = onnx.load(str(path))
    model.graph.node[0].input[0] = "no_such_tensor"  # a dangling input: parses, but is not a valid graph
    onnx.save_model(model, str(path))
    with pytest.raises(VerificationError, match=r"onnx.checker rejected the model") as e:
        check_file(path)
    assert str(path) in str(e.value)


def test_missing_metadata_names_the_file(version_dir):
    path = version_dir / "model.onnx"
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save_model(model, str(path))
    with pytest.raises(RepositoryError, match=r"no 'cnn.metadata' metadata") as e:
        read_model_metadata(path)
    assert str(path) in str(e.value)

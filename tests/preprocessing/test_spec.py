"""The preprocessing description: validation naming the field, old dict forms, digit mode selection,
and the typed checkpoint schema that carries it."""

from __future__ import annotations

import pytest
import torch

from preprocessing.spec import Preprocessing, PreprocessingError, is_digit_dataset, serving_preprocessing
from server.repository import ModelMetadata
from server.repository import Preprocessing as ServerPreprocessing
from training import checkpoint as ckpt_io

OLD = {
    "color_mode": "L",
    "height": 28,
    "width": 28,
    "resize": "bilinear",
    "scale": 1 / 255,
    "mean": [0.5],
    "std": [0.25],
}


def test_one_definition():
    assert ServerPreprocessing is Preprocessing


def test_old_dict_form_loads_as_resize():
    p = Preprocessing.from_dict(OLD)
    assert p.mode == "resize" and p.input_shape == (1, 28, 28) and p.mean == [0.5]
    md = ModelMetadata.from_json('{{"labels": ["a"], "preprocessing": {}}}'.format(__import__("json").dumps(OLD)))
    assert md.preprocessing == p


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("color_mode", "CMYK", "preprocessing.color_mode"),
        ("height", 0, "preprocessing.height"),
        ("resize", "cubic", "preprocessing.resize"),
        ("mode", "sharpen", "preprocessing.mode"),
        ("mean", [0.1, 0.2], "preprocessing.mean"),
        ("std", [0.0], "preprocessing.std"),
        ("scale", float("nan"), "preprocessing.scale"),
        ("width", 32, None),
    ],
)
def test_validation_names_the_field(key, value, match):
    d = {**OLD, key: value}
    if match is None:
        assert Preprocessing.from_dict(d).width == 32
    else:
        with pytest.raises(PreprocessingError, match=match):
            Preprocessing.from_dict(d)


def test_unknown_key_and_digit_shape_are_refused():
    with pytest.raises(PreprocessingError, match="unknown key 'gamma'"):
        Preprocessing.from_dict({**OLD, "gamma": 2})
    with pytest.raises(PreprocessingError, match="'digit' produces one-channel 28x28"):
        Preprocessing.from_dict({**OLD, "height": 32, "width": 32, "mode": "digit"})


def test_digit_mode_is_chosen_for_digit_data_only():
    assert is_digit_dataset("mnist", [1, 28, 28]) and is_digit_dataset("digits", [1, 28, 28])
    assert is_digit_dataset("idx:/data/mnist", [1, 28, 28])
    assert not is_digit_dataset("idx:/data/fashion-mnist", [1, 28, 28])
    assert not is_digit_dataset("fashion-mnist", [1, 28, 28]) and not is_digit_dataset("mnist", [1, 32, 32])
    assert not is_digit_dataset("folder:/data/pets", [3, 28, 28])
    assert serving_preprocessing(OLD, "mnist", [1, 28, 28]).mode == "digit"
    assert serving_preprocessing(OLD, "fashion-mnist", [1, 28, 28]).mode == "resize"
    assert serving_preprocessing({**OLD, "mode": "resize"}, "mnist", [1, 28, 28]).mode == "resize"  # recorded wins


def _ckpt(**over):
    d = {
        "format_version": ckpt_io.FORMAT_VERSION,
        "model_name": "lenet5",
        "model_kwargs": {},
        "state_dict": {},
        "labels": list("0123456789"),
        "input_shape": [1, 28, 28],
        "dataset": "mnist",
        "preprocessing": ckpt_io.preprocessing("L", 28, 28, [0.1307], [0.3081]),
        "epoch": 3,
    }
    d.update(over)
    return d


def test_checkpoint_schema_round_trip_and_serving_mode(tmp_path):
    ck = ckpt_io.Checkpoint.from_dict(_ckpt())
    assert ck.preprocessing.mean == [0.1307] and ck.resume == {"epoch": 3}
    assert ck.serving_preprocessing().mode == "digit"
    assert "mode" not in ck.to_dict()["preprocessing"]  # training leaves the mode to export
    ckpt_io.save_checkpoint(ck, tmp_path / "c.pt")
    back = ckpt_io.read_checkpoint(tmp_path / "c.pt")
    assert back.to_dict().keys() == ck.to_dict().keys() and back.resume["epoch"] == 3
    assert ckpt_io.load_checkpoint(tmp_path / "c.pt")["epoch"] == 3


@pytest.mark.parametrize(
    "over,match",
    [
        ({"labels": "0123"}, "'labels' must be list or tuple"),
        ({"input_shape": [1, 28]}, r"'input_shape' must be \[C, H, W\]"),
        ({"input_shape": [3, 28, 28]}, "'preprocessing' gives L 28x28 but 'input_shape' is"),
        ({"preprocessing": {**OLD, "color_mode": "HSV"}}, "preprocessing.color_mode"),
        ({"format_version": 7}, "format_version 7"),
    ],
)
def test_checkpoint_schema_names_the_bad_field(over, match):
    with pytest.raises(ckpt_io.CheckpointError, match=match):
        ckpt_io.Checkpoint.from_dict(_ckpt(**over), "x.pt")


def test_loader_messages_are_one_line(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    (tmp_path / "text.pt").write_text("hello, not a checkpoint")
    torch.save({"model_name": "lenet5"}, tmp_path / "partial.pt")
    for name, match in (
        ("evil.pt", "pickles Python objects"),
        ("text.pt", "not a PyTorch checkpoint file"),
        ("partial.pt", "missing format_version, model_kwargs, state_dict, labels"),
    ):
        with pytest.raises(ckpt_io.CheckpointError, match=match) as e:
            ckpt_io.read_checkpoint(tmp_path / name)
        assert "\n" not in str(e.value) and "weights_only" not in str(e.value) and name in str(e.value)

"""Recipes: every file loads, overrides are typed, unknown keys and bad values are named."""

from __future__ import annotations

import dataclasses
import re

import pytest

from training.config import (
    RECIPES_DIR,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    list_recipes,
    recipe_sha256,
    recommended_recipe,
    resolve_config,
)
from training.errors import ConfigError
from training.models import create_model, list_models


def test_every_recipe_file_loads_and_is_commented():
    names = list_recipes()
    assert {
        "lenet5_digits",
        "default_digits",
        "lenet5_fashion_mnist",
        "resnet20_fashion_mnist",
        "mobilenet_v2_fashion_mnist",
        "default_color",
    } <= set(names)
    for name in names:
        cfg = resolve_config(name)
        assert isinstance(cfg, TrainConfig)
        text = (RECIPES_DIR / f"{name}.toml").read_text()
        for line in text.splitlines():
            if re.match(r"^\s*\w+\s*=", line):
                assert "#" in line, f"{name}: uncommented key: {line}"
        # model arguments in the recipe are accepted by the model it names (if it names one)
        model = name.split("_")[0] if not name.startswith("default") else None
        model = next((m for m in list_models() if name.startswith(m + "_")), model)
        if cfg.model and model in list_models():
            create_model(model, num_classes=10, in_channels=1, input_size=28, **cfg.model)


def test_every_config_field_is_commented_in_the_source():
    import inspect

    from training import augment

    for cls in (TrainConfig, augment.AugmentConfig):
        src = inspect.getsource(cls)
        for f in dataclasses.fields(cls):
            line = next(ln for ln in src.splitlines() if re.match(rf"\s+{f.name}:", ln))
            assert "#" in line, f"{cls.__name__}.{f.name} has no comment"


def test_recommended_recipes():
    assert recommended_recipe("lenet5", "digits", "digits") == "lenet5_digits"
    assert recommended_recipe("vgg16", "digits", "digits") == "default_digits"
    assert recommended_recipe("resnet20", "fashion_mnist", "gray28") == "resnet20_fashion_mnist"
    assert recommended_recipe("alexnet", "fashion_mnist", "gray28") == "default_fashion_mnist"
    assert recommended_recipe("lenet5", "idx", "gray28") == "lenet5_gray28"
    assert recommended_recipe("googlenet", "idx", "gray28") == "default_gray28"
    assert recommended_recipe("resnet20", "folder", "color") == "resnet20_color"
    assert recommended_recipe("resnet18", "folder", "color") == "default_color"
    assert not resolve_config("lenet5_digits").augment.hflip  # never mirror digits
    assert resolve_config("default_fashion_mnist").augment.hflip


def test_overrides_are_typed():
    cfg = resolve_config(
        "lenet5_digits",
        [
            "lr=0.01",
            "epochs=3",
            "nesterov=false",
            "optimizer=adamw",
            "augment.rotate=5",
            "model.dropout=0.25",
            "model.activation=tanh",
        ],
    )
    assert cfg.lr == 0.01 and cfg.epochs == 3 and cfg.nesterov is False and cfg.optimizer == "adamw"
    assert cfg.augment.rotate == 5.0 and isinstance(cfg.augment.rotate, float)
    assert cfg.model == {"activation": "tanh", "pool": "max", "dropout": 0.25}


@pytest.mark.parametrize(
    "item,pattern",
    [
        ("lrr=0.1", "unknown recipe key 'lrr'"),
        ("augment.spin=3", "unknown recipe key 'augment.spin'"),
        ("epochs.x=1", "'epochs' has no sub-keys"),
        ("epochs=2.5", "'epochs' must be int"),
        ("lr=fast", "'lr' must be float"),
        ("nesterov=maybe", "'nesterov' must be bool"),
        ("epochs=0", "'epochs': must be >= 1"),
        ("optimizer=rmsprop", "'optimizer': must be one of sgd, adam, adamw"),
        ("schedule=poly", "'schedule'"),
        ("amp=fp16", "'amp': must be one of off, bf16"),
        ("augment.erase_prob=1.5", "'augment.erase_prob'"),
        ("label_smoothing=1", "'label_smoothing'"),
        ("noequals", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(item, pattern):
    with pytest.raises(ConfigError, match=re.escape(pattern)):
        resolve_config("lenet5_digits", [item])


def test_bad_recipe_files(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text("epochs = 3\nwarp = 9\n")
    with pytest.raises(ConfigError, match="unknown recipe key 'warp'"):
        resolve_config(str(p))
    p.write_text("epochs = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_config(str(p))
    with pytest.raises(ConfigError, match="unknown recipe 'nope'; available: .*lenet5_digits"):
        resolve_config("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(str(tmp_path / "missing.toml"))
    p.write_text("augment = 3\n")
    with pytest.raises(ConfigError, match="'augment' must be a table"):
        resolve_config(str(p))


def test_round_trip_and_hash():
    cfg = resolve_config("resnet20_fashion_mnist")
    d = cfg.to_dict()
    assert config_from_dict(d) == cfg
    assert recipe_sha256(d) == recipe_sha256(config_from_dict(d).to_dict())
    assert recipe_sha256(d) != recipe_sha256(apply_overrides(d, ["lr=0.3"]))
    assert len(recipe_sha256(d)) == 64

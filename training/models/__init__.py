"""The model zoo, timm-style: ``@register_model`` / ``create_model(name, **kwargs)`` / ``list_models()``.

Every model takes ``num_classes``, ``in_channels`` and ``input_size`` (square H = W), consumes float32
(B, C, H, W) that is already normalised, and returns logits (B, num_classes). Spatial sizes are worked
out in ``__init__`` from ``input_size`` so ``forward`` has no data-dependent Python control flow and
exports cleanly to ONNX (global pooling is ``x.mean((2, 3))``, not AdaptiveAvgPool2d).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch.nn as nn

from training.errors import ModelError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a model constructor under its function name."""
    name = fn.__name__
    if name in _REGISTRY:
        raise RuntimeError(f"model {name!r} registered twice")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def model_arguments(name: str) -> list[str]:
    """The keyword arguments ``create_model(name, ...)`` accepts."""
    fn = _lookup(name)
    return [p for p in inspect.signature(fn).parameters]


def resolved_arguments(name: str, **kwargs) -> dict:
    """Every keyword argument of ``create_model(name, **kwargs)`` with its value, defaults filled in.

    Checkpoints store this, so a model rebuilds the same after a default changes in a later release."""
    params = _checked_parameters(name, kwargs)
    return {k: kwargs.get(k, p.default) for k, p in params.items() if k in kwargs or p.default is not p.empty}


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model. Unknown names or arguments raise ModelError (a ValueError)."""
    _checked_parameters(name, kwargs)
    try:
        return _REGISTRY[name](**kwargs)
    except (TypeError, ValueError) as e:
        raise ModelError(f"model {name!r}: {e}") from e


def _checked_parameters(name: str, kwargs: dict) -> dict[str, inspect.Parameter]:
    """The constructor's parameters; raises ModelError naming unknown models and arguments."""
    params = inspect.signature(_lookup(name)).parameters
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown:
        raise ModelError(
            f"model {name!r} does not accept {', '.join(map(repr, unknown))}; it accepts: {', '.join(params)}"
        )
    return dict(params)


def _lookup(name: str) -> Callable[..., nn.Module]:
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    return _REGISTRY[name]


# Importing the family modules registers their models.
from training.models import alexnet, googlenet, lenet, mobilenet, resnet, vgg  # noqa: E402,F401

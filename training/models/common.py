"""Building blocks shared by the model families: activations, pooling, conv + norm + act."""

from __future__ import annotations

import torch.nn as nn

ACTIVATIONS = ("relu", "relu6", "leaky_relu", "elu", "tanh", "sigmoid")
POOLS = ("max", "avg")


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (one of ACTIVATIONS)."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.1, inplace=True)
    if name == "elu":
        return nn.ELU(inplace=True)
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")


def make_pool(name: str, kernel_size: int, stride: int, padding: int = 0) -> nn.Module:
    """Max or average pooling (one of POOLS)."""
    if name == "max":
        return nn.MaxPool2d(kernel_size, stride, padding)
    if name == "avg":
        return nn.AvgPool2d(kernel_size, stride, padding, count_include_pad=False)
    raise ValueError(f"unknown pool {name!r}; valid: {', '.join(POOLS)}")


def check_common(num_classes: int, in_channels: int, input_size: int, dropout: float) -> None:
    """Validate the arguments every model takes."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if input_size < 8:
        raise ValueError(f"input_size must be >= 8, got {input_size}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a conv/pool (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


class ConvNormAct(nn.Sequential):
    """conv -> (batch norm) -> activation. The conv has a bias only when there is no norm."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        batch_norm: bool = True,
        activation: str | None = "relu",
    ):
        padding = kernel // 2 if padding is None else padding
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        if activation is not None:
            layers.append(make_activation(activation))
        super().__init__(*layers)


def init_weights(model: nn.Module, activation: str = "relu") -> None:
    """Kaiming init for conv/linear under ReLU-like activations, Xavier for tanh/sigmoid."""
    relu_like = activation in ("relu", "relu6", "leaky_relu", "elu")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if relu_like:
                nn.init.kaiming_normal_(
                    m.weight, mode="fan_out" if isinstance(m, nn.Conv2d) else "fan_in", nonlinearity="relu"
                )
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    # The classifier (the last Linear) starts near zero: initial logits ~ 0, loss ~ ln(num_classes).
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.normal_(last.weight, std=0.01)

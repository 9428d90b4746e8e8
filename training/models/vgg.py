"""VGG-11 / VGG-16 (Simonyan & Zisserman, 2014), configurations A and D, with and without batch norm.

Large input (>= 64): five 2x2/2 pools and the 4096-4096 classifier on the (input/32)^2 x 512 map.
Small input (< 64): the CIFAR adaptation - a pool is dropped once the map is already 1x1 (28 -> 14 ->
7 -> 3 -> 1 -> 1), and the classifier is 512-512 (the 4096-wide head is pointless on a 1x1 map).
Options: activation, pool (max/avg), dropout in the classifier.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.models import register_model
from training.models.common import ConvNormAct, check_common, init_weights, make_activation, make_pool

# Numbers are conv widths, "M" is a 2x2/2 pool.
CFGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(
        self,
        cfg: str,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 224,
        activation: str = "relu",
        pool: str = "max",
        dropout: float = 0.5,
        batch_norm: bool = False,
    ):
        super().__init__()
        check_common(num_classes, in_channels, input_size, dropout)
        blocks: list[nn.Module] = []
        stage: list[nn.Module] = []
        cin, size = in_channels, input_size
        for v in CFGS[cfg]:
            if isinstance(v, str):  # "M"
                if size >= 2:  # never pool a 1x1 map
                    stage.append(make_pool(pool, 2, 2))
                    size //= 2
                blocks.append(nn.Sequential(*stage))
                stage = []
            else:
                stage.append(ConvNormAct(cin, v, 3, 1, 1, batch_norm=batch_norm, activation=activation))
                cin = v
        self.features = nn.Sequential(*blocks)  # one child per stage (ends in a pool)
        self.stages = tuple(f"features.{i}" for i in range(len(blocks)))
        hidden = 4096 if input_size >= 64 else 512
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(512 * size * size, hidden),
            make_activation(activation),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            make_activation(activation),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        return self.classifier(self.features(x))  # features: (B, 512, f, f) -> (B, num_classes)


def _vgg(
    cfg: str,
    batch_norm: bool,
    num_classes: int,
    in_channels: int,
    input_size: int,
    activation: str,
    pool: str,
    dropout: float,
) -> VGG:
    return VGG(cfg, num_classes, in_channels, input_size, activation, pool, dropout, batch_norm)


@register_model
def vgg11(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 224,
    activation: str = "relu",
    pool: str = "max",
    dropout: float = 0.5,
) -> VGG:
    """VGG-11 (configuration A), no batch norm."""
    return _vgg("A", False, num_classes, in_channels, input_size, activation, pool, dropout)


@register_model
def vgg11_bn(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 224,
    activation: str = "relu",
    pool: str = "max",
    dropout: float = 0.5,
) -> VGG:
    """VGG-11 (configuration A) with batch norm after every conv."""
    return _vgg("A", True, num_classes, in_channels, input_size, activation, pool, dropout)


@register_model
def vgg16(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 224,
    activation: str = "relu",
    pool: str = "max",
    dropout: float = 0.5,
) -> VGG:
    """VGG-16 (configuration D), no batch norm."""
    return _vgg("D", False, num_classes, in_channels, input_size, activation, pool, dropout)


@register_model
def vgg16_bn(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 224,
    activation: str = "relu",
    pool: str = "max",
    dropout: float = 0.5,
) -> VGG:
    """VGG-16 (configuration D) with batch norm after every conv."""
    return _vgg("D", True, num_classes, in_channels, input_size, activation, pool, dropout)

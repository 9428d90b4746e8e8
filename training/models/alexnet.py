"""AlexNet (Krizhevsky et al., 2012), single-tower layout as in "One weird trick" (2014).

Large input (>= 64): 11x11/4 stem, 3x3/2 pooling after conv1, conv2 and conv5, FC 4096-4096.
Small input (< 64, e.g. 28x28 or 32x32): the usual CIFAR adaptation - a 3x3/1 stem, 2x2/2 pooling
after conv1, conv2 and conv5 (so 28 -> 14 -> 7 -> 3), and narrower FC layers (1024-1024), since a
4096-wide head on a 3x3x256 map is mostly parameters with nothing to learn from.
Options: activation, pool (max/avg), dropout (before each hidden FC, 0.5 as in the paper), batch_norm.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.models import register_model
from training.models.common import ConvNormAct, check_common, conv_out, init_weights, make_activation, make_pool


class AlexNet(nn.Module):
    stages = ("conv1", "conv2", "conv3", "conv4", "conv5")

    def __init__(
        self,
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
        small = input_size < 64
        k1, s1, p1 = (3, 1, 1) if small else (11, 4, 2)
        pk, ps = (2, 2) if small else (3, 2)
        hidden = 1024 if small else 4096

        def block(cin: int, cout: int, k: int, s: int, p: int, pooled: bool) -> nn.Sequential:
            layers: list[nn.Module] = [ConvNormAct(cin, cout, k, s, p, batch_norm=batch_norm, activation=activation)]
            if pooled:
                layers.append(make_pool(pool, pk, ps))
            return nn.Sequential(*layers)

        self.conv1 = block(in_channels, 64, k1, s1, p1, True)  # (B, 64, ., .)
        self.conv2 = block(64, 192, 5, 1, 2, True)
        self.conv3 = block(192, 384, 3, 1, 1, False)
        self.conv4 = block(384, 256, 3, 1, 1, False)
        self.conv5 = block(256, 256, 3, 1, 1, True)  # (B, 256, f, f)
        f = conv_out(input_size, k1, s1, p1)
        for _ in range(3):
            f = conv_out(f, pk, ps)
        if f < 1:
            raise ValueError(f"input_size {input_size} is too small for alexnet")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(256 * f * f, hidden),
            make_activation(activation),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            make_activation(activation),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        x = self.conv5(self.conv4(self.conv3(self.conv2(self.conv1(x)))))  # (B, 256, f, f)
        return self.classifier(x)  # (B, num_classes)


@register_model
def alexnet(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 224,
    activation: str = "relu",
    pool: str = "max",
    dropout: float = 0.5,
    batch_norm: bool = False,
) -> AlexNet:
    """AlexNet; see the module docstring for the small-input adaptation."""
    return AlexNet(num_classes, in_channels, input_size, activation, pool, dropout, batch_norm)

"""LeNet-5 (LeCun et al., 1998): two 5x5 conv + pooling stages, then FC 120-84-num_classes.

The 1998 network read 32x32 images. On 28x28 input (MNIST style) the first conv is padded by 2, which
is the standard adaptation and gives the same 28x28 -> 14x14 -> 10x10 -> 5x5 maps as the paper. Other
sizes keep the layout: the flattened size is computed from ``input_size`` at construction time.

Defaults are the modern choices (ReLU, max pooling); ``activation="tanh", pool="avg"`` is closer to
the original subsampling network. ``batch_norm`` adds BN after each conv; ``dropout`` acts before the
two hidden FC layers.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.models import register_model
from training.models.common import check_common, conv_out, init_weights, make_activation, make_pool


class LeNet5(nn.Module):
    stages = ("conv1", "conv2")  # feature-map stages shown by `cnn inspect`

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        activation: str = "relu",
        pool: str = "max",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        super().__init__()
        check_common(num_classes, in_channels, input_size, dropout)
        pad = 2 if input_size < 32 else 0  # 28x28 -> pad 2, as if the image were 32x32
        s = conv_out(input_size, 5, 1, pad) // 2
        s = conv_out(s, 5) // 2
        if s < 1:
            raise ValueError(f"input_size {input_size} is too small for lenet5 (needs >= 10)")

        def stage(cin: int, cout: int, padding: int) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 5, padding=padding, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers += [make_activation(activation), make_pool(pool, 2, 2)]
            return nn.Sequential(*layers)

        self.conv1 = stage(in_channels, 6, pad)  # (B, 6, S/2, S/2)
        self.conv2 = stage(6, 16, 0)  # (B, 16, s, s), s = 5 on 28x28
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(16 * s * s, 120),
            make_activation(activation),
            nn.Dropout(dropout),
            nn.Linear(120, 84),
            make_activation(activation),
            nn.Linear(84, num_classes),
        )
        init_weights(self, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        x = self.conv2(self.conv1(x))  # (B, 16, s, s)
        return self.classifier(x)  # (B, num_classes)


@register_model
def lenet5(
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 28,
    activation: str = "relu",
    pool: str = "max",
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> LeNet5:
    """LeNet-5; see the module docstring."""
    return LeNet5(num_classes, in_channels, input_size, activation, pool, dropout, batch_norm)

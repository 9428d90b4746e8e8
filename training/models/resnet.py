"""ResNets (He et al., 2015): ImageNet-style ``resnet18`` and CIFAR-style ``resnet20``.

resnet18: BasicBlocks [2, 2, 2, 2] at widths 64-128-256-512. Large input (>= 64) keeps the 7x7/2 stem
and 3x3/2 max pool; small input (< 64) uses a 3x3/1 stem and no stem pool (the standard CIFAR
adaptation), so a 28x28 map goes 28 -> 14 -> 7 -> 4 through the stages. Projection shortcuts (1x1
conv + BN, "option B") where the shape changes.

resnet20: the paper's CIFAR network (section 4.2): 3x3 stem to 16 channels, three stages of n = 3
BasicBlocks at 16-32-64 channels, strides 1-2-2, parameter-free "option A" shortcuts (stride-2
subsampling + zero-padded channels), global average pool, FC. 0.27 M parameters.
Both: activation, dropout (before the FC), batch_norm (on by default; off -> biased convs, no BN).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.models import register_model
from training.models.common import ConvNormAct, check_common, conv_out, init_weights, make_activation


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str, bn: bool, act: str):
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout, 3, stride, 1, batch_norm=bn, activation=act)
        self.conv2 = ConvNormAct(cout, cout, 3, 1, 1, batch_norm=bn, activation=None)
        self.act = make_activation(act)
        self.pad = 0
        self.stride = stride
        self.project: nn.Module | None = None
        if stride != 1 or cin != cout:
            if shortcut == "B":
                self.project = ConvNormAct(cin, cout, 1, stride, 0, batch_norm=bn, activation=None)
            else:
                self.pad = cout - cin  # option A: zero-pad the new channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H/s, W/s)
        out = self.conv2(self.conv1(x))
        if self.project is not None:
            x = self.project(x)
        elif self.pad:
            x = x[:, :, :: self.stride, :: self.stride]
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return self.act(out + x)


class ResNet(nn.Module):
    def __init__(
        self,
        widths: list[int],
        depths: list[int],
        shortcut: str,
        imagenet_stem: bool,
        num_classes: int,
        in_channels: int,
        input_size: int,
        activation: str,
        dropout: float,
        batch_norm: bool,
    ):
        super().__init__()
        check_common(num_classes, in_channels, input_size, dropout)
        size = input_size
        if imagenet_stem:
            self.stem = nn.Sequential(
                ConvNormAct(in_channels, widths[0], 7, 2, 3, batch_norm=batch_norm, activation=activation),
                nn.MaxPool2d(3, 2, 1),
            )
            size = conv_out(conv_out(size, 7, 2, 3), 3, 2, 1)
        else:
            self.stem = ConvNormAct(in_channels, widths[0], 3, 1, 1, batch_norm=batch_norm, activation=activation)
        layers = []
        cin = widths[0]
        for i, (w, d) in enumerate(zip(widths, depths)):
            blocks = []
            for j in range(d):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(cin, w, stride, shortcut, batch_norm, activation))
                size = conv_out(size, 3, stride, 1)
                cin = w
            layers.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*layers)
        self.stages = ("stem",) + tuple(f"layers.{i}" for i in range(len(layers)))
        if size < 1:
            raise ValueError(f"input_size {input_size} is too small")
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        x = self.layers(self.stem(x))  # (B, widths[-1], f, f)
        x = x.mean(dim=(2, 3))  # (B, widths[-1])
        return self.fc(self.dropout(x))  # (B, num_classes)


@register_model
def resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 224,
    activation: str = "relu",
    dropout: float = 0.0,
    batch_norm: bool = True,
) -> ResNet:
    """ResNet-18; ImageNet stem for input_size >= 64, CIFAR stem (3x3/1, no pool) below."""
    return ResNet(
        [64, 128, 256, 512],
        [2, 2, 2, 2],
        "B",
        input_size >= 64,
        num_classes,
        in_channels,
        input_size,
        activation,
        dropout,
        batch_norm,
    )


@register_model
def resnet20(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    activation: str = "relu",
    dropout: float = 0.0,
    batch_norm: bool = True,
) -> ResNet:
    """ResNet-20, the CIFAR network of He et al. (3 stages x 3 blocks, 16-32-64, option A shortcuts)."""
    return ResNet(
        [16, 32, 64], [3, 3, 3], "A", False, num_classes, in_channels, input_size, activation, dropout, batch_norm
    )

"""GoogLeNet / Inception v1 (Szegedy et al., 2014): nine Inception modules, global average pooling.

Each Inception module concatenates four branches: 1x1; 1x1 -> 3x3; 1x1 -> 5x5 (5x5 as in the paper,
torchvision uses 3x3 there); 3x3/1 pool -> 1x1. The two auxiliary classifiers are left out (they only
matter for training very deep nets without batch norm, and they are not part of inference).

Large input (>= 64): the paper's stem, 7x7/2 conv, 3x3/2 pool, 1x1 + 3x3 conv, 3x3/2 pool (224 -> 28).
Small input (< 64): a single 3x3/1 conv to 192 channels and no stem pooling (the usual CIFAR
adaptation), so 28x28 digits reach the Inception stages at 28x28 -> 14 -> 7.
Options: activation, pool (max/avg for the between-stage pools), dropout (0.4 before the classifier,
as in the paper), batch_norm (on by default - BN-Inception style - which makes it trainable without
the auxiliary heads).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.models import register_model
from training.models.common import ConvNormAct, check_common, conv_out, init_weights, make_pool


class Inception(nn.Module):
    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int, bn: bool, act: str):
        super().__init__()
        self.b1 = ConvNormAct(cin, c1, 1, batch_norm=bn, activation=act)
        self.b2 = nn.Sequential(
            ConvNormAct(cin, c3r, 1, batch_norm=bn, activation=act),
            ConvNormAct(c3r, c3, 3, batch_norm=bn, activation=act),
        )
        self.b3 = nn.Sequential(
            ConvNormAct(cin, c5r, 1, batch_norm=bn, activation=act),
            ConvNormAct(c5r, c5, 5, batch_norm=bn, activation=act),
        )
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), ConvNormAct(cin, cp, 1, batch_norm=bn, activation=act))
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, c1+c3+c5+cp, H, W)
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


class GoogLeNet(nn.Module):
    stages = ("stem", "inception3b", "inception4e", "inception5b")

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 224,
        activation: str = "relu",
        pool: str = "max",
        dropout: float = 0.4,
        batch_norm: bool = True,
    ):
        super().__init__()
        check_common(num_classes, in_channels, input_size, dropout)
        bn, act = batch_norm, activation
        if input_size >= 64:
            self.stem = nn.Sequential(
                ConvNormAct(in_channels, 64, 7, 2, 3, batch_norm=bn, activation=act),
                make_pool(pool, 3, 2, 1),
                ConvNormAct(64, 64, 1, batch_norm=bn, activation=act),
                ConvNormAct(64, 192, 3, batch_norm=bn, activation=act),
                make_pool(pool, 3, 2, 1),
            )
            size = conv_out(conv_out(conv_out(input_size, 7, 2, 3), 3, 2, 1), 3, 2, 1)
        else:
            self.stem = ConvNormAct(in_channels, 192, 3, batch_norm=bn, activation=act)
            size = input_size
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32, bn, act)  # 256
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64, bn, act)  # 480
        self.pool3 = make_pool(pool, 3, 2, 1)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64, bn, act)  # 512
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64, bn, act)  # 512
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64, bn, act)  # 512
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64, bn, act)  # 528
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128, bn, act)  # 832
        self.pool4 = make_pool(pool, 3, 2, 1)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128, bn, act)  # 832
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128, bn, act)  # 1024
        if conv_out(conv_out(size, 3, 2, 1), 3, 2, 1) < 1:
            raise ValueError(f"input_size {input_size} is too small for googlenet")
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)
        init_weights(self, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        x = self.stem(x)  # (B, 192, S, S)
        x = self.pool3(self.inception3b(self.inception3a(x)))  # (B, 480, S/2, S/2)
        x = self.inception4c(self.inception4b(self.inception4a(x)))
        x = self.pool4(self.inception4e(self.inception4d(x)))  # (B, 832, S/4, S/4)
        x = self.inception5b(self.inception5a(x))  # (B, 1024, S/4, S/4)
        x = x.mean(dim=(2, 3))  # (B, 1024) global average pool
        return self.fc(self.dropout(x))  # (B, num_classes)


@register_model
def googlenet(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 224,
    activation: str = "relu",
    pool: str = "max",
    dropout: float = 0.4,
    batch_norm: bool = True,
) -> GoogLeNet:
    """GoogLeNet (Inception v1) without auxiliary heads; see the module docstring."""
    return GoogLeNet(num_classes, in_channels, input_size, activation, pool, dropout, batch_norm)

"""MobileNet v1 (Howard et al., 2017) and v2 (Sandler et al., 2018).

v1: a 3x3 conv then 13 depthwise-separable blocks (3x3 depthwise conv + BN + act, 1x1 pointwise conv
+ BN + act), global average pool, FC. v2: inverted residual blocks (1x1 expand by t, 3x3 depthwise,
1x1 linear projection; residual when the shape is kept), a final 1x1 conv to 1280, ReLU6 by default.
Both take ``width_mult`` (channel multiplier, rounded to multiples of 8).

Small input (< 64): the first conv's stride becomes 1. Any input: a stride-2 stage keeps stride 1 when
its output would be smaller than ``min_feature_size`` (default 4; 1 = the paper's strides). A 28x28
image then ends as a 4x4 map (28 -> 14 -> 7 -> 4 -> 4) instead of 2x2; 224 keeps the paper's 7x7, 96
ends at 6x6 instead of 3x3. On Fashion-MNIST the 4x4 map took MobileNetV2 (width 0.5, 17 epochs) from
92.88 % to 93.26 % test accuracy at ~0.8x the images/s (docs/training.md, runs C and G).
Options: activation, dropout (before the FC), batch_norm (on by default).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.models import register_model
from training.models.common import ConvNormAct, check_common, conv_out, init_weights


def _round8(c: float) -> int:
    return max(8, int(c + 4) // 8 * 8)


def _stride(size: int, stride: int, min_feature_size: int) -> int:
    """A downsampling stage keeps stride 1 when stride 2 would take the map below min_feature_size."""
    return stride if stride == 1 or conv_out(size, 3, stride, 1) >= min_feature_size else 1


class DepthwiseSeparable(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int, bn: bool, act: str):
        super().__init__(
            ConvNormAct(cin, cin, 3, stride, 1, groups=cin, batch_norm=bn, activation=act),
            ConvNormAct(cin, cout, 1, 1, 0, batch_norm=bn, activation=act),
        )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, bn: bool, act: str):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvNormAct(cin, hidden, 1, 1, 0, batch_norm=bn, activation=act))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride, 1, groups=hidden, batch_norm=bn, activation=act),
            ConvNormAct(hidden, cout, 1, 1, 0, batch_norm=bn, activation=None),
        ]  # linear bottleneck
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H/s, W/s)
        out = self.block(x)
        return x + out if self.residual else out


class _Head(nn.Module):
    """Shared tail: global average pool -> dropout -> FC."""

    dropout: nn.Dropout  # set by the subclass
    fc: nn.Linear

    def _head(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, f, f) -> (B, num_classes)
        return self.fc(self.dropout(x.mean(dim=(2, 3))))


class MobileNetV1(_Head):
    # (out_channels, stride) of the 13 depthwise-separable blocks
    CFG = [
        (64, 1),
        (128, 2),
        (128, 1),
        (256, 2),
        (256, 1),
        (512, 2),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (1024, 2),
        (1024, 1),
    ]

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        input_size: int,
        activation: str,
        dropout: float,
        batch_norm: bool,
        width_mult: float,
        min_feature_size: int,
    ):
        super().__init__()
        check_common(num_classes, in_channels, input_size, dropout)
        if min_feature_size < 1:
            raise ValueError(f"min_feature_size must be >= 1, got {min_feature_size}")
        stride0 = 2 if input_size >= 64 else 1
        cin = _round8(32 * width_mult)
        self.stem = ConvNormAct(in_channels, cin, 3, stride0, 1, batch_norm=batch_norm, activation=activation)
        size = conv_out(input_size, 3, stride0, 1)
        blocks = []
        for c, s in self.CFG:
            s = _stride(size, s, min_feature_size)
            cout = _round8(c * width_mult)
            blocks.append(DepthwiseSeparable(cin, cout, s, batch_norm, activation))
            size, cin = conv_out(size, 3, s, 1), cout
        self.blocks = nn.Sequential(*blocks)
        # stages for `cnn inspect`: the output of each resolution
        self.stages = ("stem", "blocks.0", "blocks.2", "blocks.4", "blocks.10", "blocks.12")
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        return self._head(self.blocks(self.stem(x)))  # blocks: (B, 1024*w, f, f)


class MobileNetV2(_Head):
    # t (expansion), c (channels), n (repeats), s (stride of the first repeat), as in Table 2 of the paper
    CFG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        input_size: int,
        activation: str,
        dropout: float,
        batch_norm: bool,
        width_mult: float,
        min_feature_size: int,
    ):
        super().__init__()
        check_common(num_classes, in_channels, input_size, dropout)
        if min_feature_size < 1:
            raise ValueError(f"min_feature_size must be >= 1, got {min_feature_size}")
        stride0 = 2 if input_size >= 64 else 1
        cin = _round8(32 * width_mult)
        self.stem = ConvNormAct(in_channels, cin, 3, stride0, 1, batch_norm=batch_norm, activation=activation)
        size = conv_out(input_size, 3, stride0, 1)
        blocks, names = [], []
        for t, c, n, s in self.CFG:
            s = _stride(size, s, min_feature_size)
            size = conv_out(size, 3, s, 1)
            cout = _round8(c * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, batch_norm, activation))
                cin = cout
            names.append(f"blocks.{len(blocks) - 1}")
        self.blocks = nn.Sequential(*blocks)
        last = _round8(1280 * max(1.0, width_mult))
        self.last = ConvNormAct(cin, last, 1, 1, 0, batch_norm=batch_norm, activation=activation)
        self.stages = ("stem", *names, "last")
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(last, num_classes)
        init_weights(self, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        x = self.last(self.blocks(self.stem(x)))  # (B, 1280, f, f)
        return self._head(x)  # (B, num_classes)


@register_model
def mobilenet_v1(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 224,
    activation: str = "relu",
    dropout: float = 0.0,
    batch_norm: bool = True,
    width_mult: float = 1.0,
    min_feature_size: int = 4,
) -> MobileNetV1:
    """MobileNet v1 (depthwise separable convolutions); small input: first stride 1, final map >= 4x4."""
    return MobileNetV1(
        num_classes, in_channels, input_size, activation, dropout, batch_norm, width_mult, min_feature_size
    )


@register_model
def mobilenet_v2(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 224,
    activation: str = "relu6",
    dropout: float = 0.2,
    batch_norm: bool = True,
    width_mult: float = 1.0,
    min_feature_size: int = 4,
) -> MobileNetV2:
    """MobileNet v2 (inverted residuals, linear bottlenecks); small input: first stride 1, final map >= 4x4."""
    return MobileNetV2(
        num_classes, in_channels, input_size, activation, dropout, batch_norm, width_mult, min_feature_size
    )

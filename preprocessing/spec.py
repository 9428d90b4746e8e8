"""The one preprocessing description: what turns a decoded image into a model's input row.

Written by training into the checkpoint (as a plain dict, so ``torch.load(weights_only=True)`` reads it),
by export into the ONNX metadata (JSON), and read by the server, ``cnn inspect`` and export's gate data.
No torch here: the serving install imports this module.

    mode "resize": convert to color_mode, resize to height x width with `resize` interpolation
    mode "digit":  handwritten-digit normalisation for photos and scans (preprocessing.digit): find the
                   ink and its polarity, crop it, fit it in a 20x20 box, centre of mass at the centre of
                   the 28x28 field, white ink on black (how MNIST was made); color_mode must be "L"
    then, in both modes: x * scale, then (x - mean) / std per channel, laid out (C, H, W) float32.

Old checkpoints and model metadata (a dict with color_mode/height/width/resize/scale/mean/std, no `mode`)
load as mode "resize".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

COLOR_MODES = ("L", "RGB")  # PIL modes: grayscale (1 channel), RGB (3 channels)
MODES = ("resize", "digit")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "lanczos", "area")
DIGIT_SIZE = 28  # the MNIST field; mode "digit" produces it and nothing else


class PreprocessingError(ValueError):
    """A preprocessing description that cannot be applied; the message names the field."""


@dataclass
class Preprocessing:
    color_mode: str = "L"  # "L" grayscale (1 channel) or "RGB" (3 channels)
    height: int = 28  # model input height, pixels
    width: int = 28  # model input width, pixels
    resize: str = "bilinear"  # interpolation of mode "resize": bilinear, nearest, bicubic, lanczos, area
    scale: float = 1.0 / 255.0  # uint8 -> [0, 1]
    mean: list[float] = field(default_factory=lambda: [0.0])  # per channel (or one for all), after scale
    std: list[float] = field(default_factory=lambda: [1.0])  # per channel (or one for all), after scale
    mode: str = "resize"  # "resize" (plain) or "digit" (handwritten-digit normalisation, see module doc)

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "L" else 3

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one model input row."""
        return (self.channels, self.height, self.width)

    def validate(self, where: str = "preprocessing") -> Preprocessing:
        def bad(key: str, why: str) -> PreprocessingError:
            return PreprocessingError(f"{where}.{key}: {why}")

        if self.color_mode not in COLOR_MODES:
            raise bad("color_mode", f"must be one of {', '.join(COLOR_MODES)}, got {self.color_mode!r}")
        for key in ("height", "width"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65536:
                raise bad(key, f"must be an integer in 1..65536, got {v!r}")
        if self.resize not in INTERPOLATIONS:
            raise bad("resize", f"must be one of {', '.join(INTERPOLATIONS)}, got {self.resize!r}")
        if self.mode not in MODES:
            raise bad("mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}")
        if (
            isinstance(self.scale, bool)
            or not isinstance(self.scale, (int, float))
            or not math.isfinite(self.scale)
            or self.scale == 0
        ):
            raise bad("scale", f"must be a finite non-zero number, got {self.scale!r}")
        for key in ("mean", "std"):
            v = getattr(self, key)
            if (
                not isinstance(v, (list, tuple))
                or len(v) not in (1, self.channels)
                or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in v)
            ):
                raise bad(key, f"must be a list of 1 or {self.channels} finite numbers, got {v!r}")
        if any(s == 0 for s in self.std):
            raise bad("std", f"must not contain 0, got {self.std!r}")
        if self.mode == "digit" and (self.color_mode != "L" or (self.height, self.width) != (DIGIT_SIZE, DIGIT_SIZE)):
            raise bad(
                "mode",
                f"'digit' produces one-channel {DIGIT_SIZE}x{DIGIT_SIZE} images; this model takes "
                f"{self.color_mode} {self.height}x{self.width}",
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (checkpoint and JSON safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Preprocessing, where: str = "preprocessing") -> Preprocessing:
        """From a checkpoint or metadata dict (old ones have no `mode`: they load as "resize");
        validated; an unknown key is an error that names it."""
        if isinstance(data, Preprocessing):
            return dataclasses.replace(data, mean=list(data.mean), std=list(data.std)).validate(where)
        if not isinstance(data, Mapping):
            raise PreprocessingError(f"{where}: must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PreprocessingError(f"{where}: unknown key {unknown[0]!r} (valid: {', '.join(sorted(known))})")
        kwargs = dict(data)
        for key in ("mean", "std"):
            if isinstance(kwargs.get(key), tuple):
                kwargs[key] = list(kwargs[key])
        return cls(**kwargs).validate(where)


def for_dataset(
    color_mode: str, height: int, width: int, mean: list[float], std: list[float], *, mode: str = "resize"
) -> Preprocessing:
    """The description training writes: uint8 -> [0, 1], then (x - mean) / std; bilinear resize."""
    return Preprocessing(
        color_mode=color_mode,
        height=int(height),
        width=int(width),
        resize="bilinear",
        scale=1.0 / 255.0,
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        mode=mode,
    ).validate()


def is_digit_dataset(spec: str, input_shape: list[int] | tuple[int, ...]) -> bool:
    """MNIST-style handwritten digits (single channel, 28x28): the sources `mnist`, `digits` and `idx:` of
    MNIST. Their models get mode "digit" so that photos and scans are normalised the way MNIST was."""
    spec = str(spec or "")
    digit_source = spec in ("mnist", "digits") or (spec.startswith("idx:") and "fashion" not in spec.lower())
    return digit_source and list(input_shape) == [1, DIGIT_SIZE, DIGIT_SIZE]


def serving_preprocessing(
    pre: Mapping[str, Any] | Preprocessing,
    dataset: str,
    input_shape: list[int] | tuple[int, ...],
    where: str = "preprocessing",
) -> Preprocessing:
    """The preprocessing a model is served with: the recorded one; a description without `mode` (every
    checkpoint training writes, and old ones) gets "digit" for digit data (is_digit_dataset), else "resize"."""
    recorded = pre.to_dict() if isinstance(pre, Preprocessing) else dict(pre)
    if "mode" not in recorded:
        recorded["mode"] = "digit" if is_digit_dataset(dataset, input_shape) else "resize"
    return Preprocessing.from_dict(recorded, where)

"""Encoded image (PNG/JPEG) or raw pixels -> the model's input row, from the model's own metadata.

Decoding and its limits live here; the conversion is preprocessing.image.to_model_input, the one
implementation that export's gate data and `cnn inspect` use too: mode "resize" (colour mode, resize to
(height, width)) or mode "digit" (handwritten-digit normalisation of photos and scans), then
`x * scale`, `(x - mean) / std` per channel, laid out (C, H, W). Image headers are read before any pixel
is decoded, so a decompression bomb is refused without allocating it.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from preprocessing.image import ImageModeError
from preprocessing.image import to_model_input as _to_model_input
from preprocessing.spec import Preprocessing
from server.errors import InvalidInput, ResourceExhausted

ALLOWED_FORMATS = ("PNG", "JPEG")
_RAW_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 4096 * 4096  # width * height; larger images are refused before decoding
    max_side: int = 8192  # pixels, either side


def decode(data: bytes, field: str, limits: ImageLimits) -> Image.Image:
    """Open and fully decode a PNG/JPEG, refusing bombs, truncation and other formats."""
    if not data:
        raise InvalidInput(f"{field}: empty image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except UnidentifiedImageError:
        raise InvalidInput(f"{field}: not a PNG or JPEG image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ResourceExhausted(f"{field}: image is too large (decompression bomb guard)") from None
    except Exception as e:
        raise InvalidInput(f"{field}: cannot read image header: {e}") from None
    w, h = img.size
    if w == 0 or h == 0:
        raise InvalidInput(f"{field}: image is {w}x{h}; it has no pixels")
    if w > limits.max_side or h > limits.max_side or w * h > limits.max_pixels:
        raise ResourceExhausted(
            f"{field}: image is {w}x{h} pixels; the limit is {limits.max_pixels} pixels "
            f"and {limits.max_side} per side (refused before decoding)"
        )
    try:
        img.load()
    except Exception as e:  # truncated or corrupt pixel data
        raise InvalidInput(f"{field}: image data is truncated or corrupt: {e}") from None
    return img


def from_raw(pixels: bytes, height: int, width: int, channels: int, field: str, limits: ImageLimits) -> Image.Image:
    if channels not in _RAW_MODES:
        raise InvalidInput(f"{field}.channels: must be 1, 3 or 4, got {channels}")
    if height == 0 or width == 0:
        raise InvalidInput(f"{field}: raw image is {width}x{height}; it has no pixels")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise ResourceExhausted(f"{field}: raw image is {width}x{height}; the limit is {limits.max_pixels} pixels")
    expected = height * width * channels
    if len(pixels) != expected:
        raise InvalidInput(
            f"{field}.pixels: {len(pixels)} bytes, but {height}x{width}x{channels} uint8 needs {expected}"
        )
    arr = np.frombuffer(pixels, dtype=np.uint8).reshape(height, width, channels)
    return Image.fromarray(arr[:, :, 0] if channels == 1 else arr, _RAW_MODES[channels])


def to_model_input(img: Image.Image, pre: Preprocessing, dtype: np.dtype, field: str) -> np.ndarray:
    """(C, H, W) array in the model's input dtype."""
    try:
        return _to_model_input(img, pre, dtype)
    except ImageModeError as e:
        raise InvalidInput(f"{field}: {e}") from None

"""A decoded image -> the model's input row, as a Preprocessing says: the one implementation that the
server, `cnn inspect` and export's gate/calibration data share.

    to_model_input(img, pre)   PIL image (any mode) -> (C, H, W) float32
    geometry(img, pre)         PIL image -> uint8 (H, W) or (H, W, C) at the model's size, before scaling
    normalise(a, pre)          uint8 (H, W[, C]) or (N, C, H, W) -> float32 (x * scale - mean) / std
    prepare_batch(x, pre)      uint8 (N, C, H, W) dataset images -> float32 (N, C, H, W) model input

Mode "resize": colour conversion with PIL, then PIL's resize with the named interpolation. Mode "digit":
grayscale (transparency flattened onto a background that contrasts with the strokes), then
preprocessing.digit.normalise_digit. Both end in normalise().
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from preprocessing.spec import Preprocessing

RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,
}
CONVERTIBLE_MODES = {
    "1",
    "L",
    "LA",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "RGBX",
    "CMYK",
    "YCbCr",
    "I;16",
    "I;16B",
    "I;16L",
    "I",
    "F",
}
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I", "F")


class ImageModeError(ValueError):
    """An image whose pixel mode cannot be converted to the model's colour mode."""


_ROWS_PER_BAND = 256  # _eight_bit converts this many rows at a time (4096 wide: 8 MiB of float64)


def _eight_bit(img: Image.Image) -> Image.Image:
    """High bit depth (16-bit, int32, float) -> 8-bit grayscale, scaled when it goes beyond 255.

    A band of rows at a time: the same arithmetic as converting the whole image at once, but the only full-size arrays are the decoded image and the 8-bit result (a
    4096x4096 16-bit image once took ~360 MiB of float64 copies; issue 18)."""
    arr = np.asarray(img)
    if arr.ndim != 2:
        arr = arr.reshape(arr.shape[0], -1)
    hi = float(arr.max()) if arr.size else 0.0
    scale = 255.0 / hi if hi > 255 else 1.0
    out = np.empty(arr.shape, dtype=np.uint8)
    for r in range(0, arr.shape[0], _ROWS_PER_BAND):
        band = arr[r : r + _ROWS_PER_BAND].astype(np.float64)
        if scale != 1.0:
            band *= scale
        np.clip(band, 0, 255, out=band)
        out[r : r + _ROWS_PER_BAND] = band  # truncates toward zero, as astype(np.uint8) did
    return Image.fromarray(out, "L")


def convert(img: Image.Image, mode: str) -> Image.Image:
    """Convert to "L" or "RGB" (PIL's ITU-R 601 luma for colour -> L)."""
    if img.mode == mode:
        return img
    if img.mode not in CONVERTIBLE_MODES:
        raise ImageModeError(f"unsupported image mode {img.mode!r}")
    if img.mode in _HIGH_DEPTH:
        img = _eight_bit(img)
    if img.mode in ("RGBA", "LA", "PA", "P") and mode == "L":
        img = img.convert("RGBA")
    return img.convert(mode)


def gray_for_digit(img: Image.Image) -> np.ndarray:
    """uint8 (H, W) grayscale; transparent pixels take the colour that contrasts with the opaque ones
    (a black digit drawn on a transparent canvas stays a black digit on white)."""
    if img.mode not in CONVERTIBLE_MODES:
        raise ImageModeError(f"unsupported image mode {img.mode!r}")
    if img.mode in _HIGH_DEPTH:
        return np.asarray(_eight_bit(img))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        la = np.asarray(img.convert("RGBA").convert("LA"), dtype=np.float32)
        gray, alpha = la[..., 0], la[..., 1] / 255.0
        opaque = alpha > 0.5
        if opaque.any() and not opaque.all():
            back = 0.0 if float(gray[opaque].mean()) > 127.5 else 255.0
            gray = gray * alpha + back * (1.0 - alpha)
        return np.clip(gray + 0.5, 0, 255).astype(np.uint8)
    return np.asarray(img.convert("L"))


def geometry(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) at the model's size, before scale/mean/std."""
    if pre.mode == "digit":
        from preprocessing.digit import normalise_digit

        return normalise_digit(gray_for_digit(img))
    img = convert(img, pre.color_mode)
    if img.size != (pre.width, pre.height):
        img = img.resize((pre.width, pre.height), RESAMPLE[pre.resize])
    return np.asarray(img)


def normalise(a: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """(x * scale - mean) / std in float32. (H, W) or (H, W, C) -> (C, H, W); (N, C, H, W) stays NCHW."""
    x = np.asarray(a, dtype=np.float32)
    if x.ndim == 2:
        x = x[None, :, :]
    elif x.ndim == 3:
        x = x.transpose(2, 0, 1)
    shape = (-1, 1, 1) if x.ndim == 3 else (1, -1, 1, 1)
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(shape)
    std = np.asarray(pre.std, dtype=np.float32).reshape(shape)
    return np.ascontiguousarray((x * np.float32(pre.scale) - mean) / std, dtype=np.float32)


def to_model_input(img: Image.Image, pre: Preprocessing, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """(C, H, W) array in the model's input dtype."""
    return normalise(geometry(img, pre), pre).astype(dtype, copy=False)


def prepare_batch(x: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Dataset images uint8 (N, C, H, W), already in the model's training form (a digit dataset's images
    are normalised digits, so the digit stage is not run again) -> float32 (N, C, H, W). Images of
    another size are resized one by one exactly as the server resizes (PIL, `pre.resize`), so that what
    export verifies is what the server feeds."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"prepare_batch takes (N, C, H, W) images, got shape {x.shape}")
    if tuple(x.shape[2:]) == (pre.height, pre.width) and x.shape[1] == pre.channels:
        return normalise(x, pre)
    if x.dtype != np.uint8:
        raise ValueError(f"prepare_batch resizes uint8 images only, got {x.dtype}")
    plain = pre if pre.mode == "resize" else dataclasses.replace(pre, mode="resize")
    rows = [geometry(_to_pil(img), plain) for img in x]
    return normalise(np.stack(rows)[:, None] if rows[0].ndim == 2 else np.stack(rows).transpose(0, 3, 1, 2), pre)


def _to_pil(chw: np.ndarray) -> Image.Image:
    c = chw.shape[0]
    if c == 1:
        return Image.fromarray(np.ascontiguousarray(chw[0]), "L")
    if c == 3:
        return Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)), "RGB")
    raise ValueError(f"images with {c} channels cannot be converted")

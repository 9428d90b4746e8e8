"""Real MNIST test digits drawn into synthetic frames for the preprocessing unit tests."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from training.data import mnist_dir, read_idx

_cache: dict[str, np.ndarray] = {}


def mnist_test(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """The first n MNIST test digits (uint8 (n, 28, 28), white on black) and labels."""
    if "x" not in _cache:
        d = mnist_dir()
        _cache["x"] = read_idx(next(d.glob("t10k-images-idx3-ubyte*")))
        _cache["y"] = read_idx(next(d.glob("t10k-labels-idx1-ubyte*")))
    return _cache["x"][:n], _cache["y"][:n]


def draw(
    digit: np.ndarray,
    frame: tuple[int, int] = (300, 300),
    height: float = 0.5,
    centre: tuple[float, float] = (0.5, 0.5),
    ink: tuple[int, int, int] = (20, 20, 20),
    paper: tuple[int, int, int] = (240, 240, 235),
    light: tuple[float, float] = (1.0, 1.0),
    noise: float = 0.0,
    blur: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """uint8 RGB (h, w, 3): `digit` (28x28 MNIST) as ink on paper; `height` = the digit's 20-pixel box as a
    fraction of the frame height; `centre` = where its field's centre lies (fractions of w, h);
    `light` = brightness at the left and right edge (a horizontal gradient)."""
    h, w = frame
    size = max(8, int(round(height * h * 28 / 20)))
    a = cv2.resize(digit.astype(np.float32) / 255.0, (size, size), interpolation=cv2.INTER_CUBIC)
    a = np.clip(a, 0, 1)
    alpha = np.zeros((h, w), np.float32)
    y0, x0 = int(centre[1] * h - size / 2), int(centre[0] * w - size / 2)
    ys, xs, ye, xe = max(0, y0), max(0, x0), min(h, y0 + size), min(w, x0 + size)
    alpha[ys:ye, xs:xe] = a[ys - y0 : ye - y0, xs - x0 : xe - x0]
    img = np.ones((h, w, 3), np.float32) * np.float32(paper)
    img = img * (1 - alpha[..., None]) + np.float32(ink) * alpha[..., None]
    img *= np.linspace(light[0], light[1], w, dtype=np.float32)[None, :, None]
    if blur:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    if noise:
        img += np.random.default_rng(seed).normal(0, noise, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg(rgb: np.ndarray, quality: int) -> Image.Image:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 28x28 fields (1 = the same picture)."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den else 0.0


def centre_of_mass(field: np.ndarray) -> tuple[float, float]:
    f = field.astype(np.float64)
    ys, xs = np.indices(f.shape)
    return float((ys * f).sum() / f.sum()), float((xs * f).sum() / f.sum())

"""One preprocessing on both sides: export's gate/calibration data (export.data.preprocess) and the
server's Classification path (server.imaging) give the same model input, within 1e-5, on images that
need resizing and colour conversion; the digit mode runs through the same function."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from export.data import preprocess as export_preprocess
from preprocessing.image import normalise, prepare_batch, to_model_input
from preprocessing.spec import Preprocessing
from server.errors import InvalidInput
from server.imaging import ImageLimits, decode
from server.imaging import to_model_input as server_input


def _images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, 3, h, w): smooth colour gradients plus texture, so resampling differences would show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        base = np.stack([np.sin(xx / rng.uniform(3, 9) + c) * np.cos(yy / rng.uniform(3, 9)) for c in range(3)])
        out.append(np.clip(127 + 100 * base + rng.normal(0, 20, (3, h, w)), 0, 255).astype(np.uint8))
    return np.stack(out)


def _png(chw: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)), "RGB").save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "color_mode,size,resize",
    [
        ("L", (28, 28), "bilinear"),  # RGB -> L and 45x61 -> 28x28
        ("RGB", (32, 24), "bilinear"),  # resize only, non-square
        ("L", (40, 40), "bicubic"),  # upscaling, another interpolation
        ("RGB", (16, 16), "area"),
    ],
)
def test_export_and_server_agree(color_mode, size, resize):
    c = 1 if color_mode == "L" else 3
    pre = Preprocessing(
        color_mode=color_mode, height=size[0], width=size[1], resize=resize, mean=[0.2] * c, std=[0.3] * c
    ).validate()
    x = _images(6, 45, 61)
    exported = export_preprocess(torch.from_numpy(x), pre.to_dict())  # what export gates and calibrates on
    served = np.stack(
        [
            server_input(decode(_png(img), "images[0]", ImageLimits()), pre, np.dtype(np.float32), "images[0]")
            for img in x
        ]
    )
    assert exported.shape == served.shape == (6, c, *size)
    np.testing.assert_allclose(exported, served, rtol=0, atol=1e-5)
    assert np.abs(exported).max() > 1  # the images are not trivially equal (normalised, not all zero)


def test_fast_path_equals_the_per_image_path():
    pre = Preprocessing(color_mode="L", height=28, width=28, mean=[0.1307], std=[0.3081]).validate()
    x = _images(4, 28, 28)[:, :1]
    per_image = np.stack([to_model_input(Image.fromarray(img[0], "L"), pre) for img in x])
    np.testing.assert_array_equal(prepare_batch(x, pre), per_image)
    np.testing.assert_array_equal(normalise(x[0, 0], pre), per_image[0])


def test_digit_mode_in_the_server_path():
    pre = Preprocessing(mode="digit", mean=[0.1307], std=[0.3081]).validate()
    canvas = np.full((120, 200, 3), 235, np.uint8)
    canvas[30:90, 95:103] = (20, 30, 120)  # a blue "1" on paper, off to the side
    row = server_input(Image.fromarray(canvas), pre, np.dtype(np.float32), "images[0]")
    assert row.shape == (1, 28, 28)
    ink = row[0] > 0
    ys, xs = np.nonzero(ink)
    assert 18 <= ys.max() - ys.min() + 1 <= 21 and abs(xs.mean() - 14) <= 1  # 20-pixel box, centred
    assert np.isclose(row[0, 0, 0], -0.1307 / 0.3081, atol=1e-6)  # background: black after normalisation


def test_digit_mode_on_dataset_images_is_not_rerun():
    """Export's data are already MNIST fields: prepare_batch only normalises them."""
    pre = Preprocessing(mode="digit").validate()
    x = _images(2, 28, 28)[:, :1]
    np.testing.assert_allclose(prepare_batch(x, pre), x.astype(np.float32) / 255, rtol=0, atol=1e-6)


def test_unconvertible_mode_names_the_field():
    pre = Preprocessing().validate()
    img = Image.new("HSV", (8, 8))
    with pytest.raises(InvalidInput, match=r"images\[3\]: unsupported image mode 'HSV'"):
        server_input(img, pre, np.dtype(np.float32), "images[3]")

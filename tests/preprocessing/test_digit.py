"""Digit normalisation (preprocessing/digit.py) on real MNIST test digits drawn into photo-like frames:
each case must give the same 28x28 field as the MNIST digit itself (Pearson correlation), white ink on black,
the digit in the 20x20 box, its centre of mass at the field's centre."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from preprocessing.digit import BOX, FIELD, normalise_digit
from preprocessing.image import gray_for_digit
from tests.preprocessing.helpers import centre_of_mass, draw, jpeg, mnist_test, similarity

N = 20
CASES = {  # name: (draw arguments, least mean similarity over N digits)
    "dark ink on light paper": ({}, 0.95),
    "light ink on dark (polarity)": ({"ink": (240, 240, 240), "paper": (10, 10, 10)}, 0.95),
    "off-centre, in a corner": ({"centre": (0.2, 0.8), "height": 0.3}, 0.93),
    "tiny digit in a large frame": ({"height": 0.07, "frame": (400, 400)}, 0.8),
    "huge digit filling the frame": ({"height": 0.68}, 0.93),
    "sensor noise": ({"noise": 25}, 0.95),
    "uneven light, 35% to 100%": ({"light": (0.35, 1.0)}, 0.94),  # 0.949 against the digit itself
    "blue ink on yellow paper": ({"ink": (30, 50, 160), "paper": (250, 235, 150)}, 0.95),
    "blur": ({"blur": 3}, 0.92),
    "wide landscape frame": ({"frame": (240, 640), "centre": (0.7, 0.5)}, 0.9),
}


def _field(rgb: np.ndarray | Image.Image) -> np.ndarray:
    img = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
    return normalise_digit(gray_for_digit(img))


@pytest.mark.parametrize("name", list(CASES))
def test_photo_like_digit_gives_the_mnist_field(name):
    kwargs, least = CASES[name]
    x, _ = mnist_test(N)
    sims = [similarity(d, _field(draw(d, seed=i, **kwargs))) for i, d in enumerate(x)]  # the MNIST digit itself
    assert float(np.mean(sims)) >= least, f"{name}: mean similarity {np.mean(sims):.3f} < {least} ({np.round(sims, 2)})"


def test_jpeg_artefacts():
    x, _ = mnist_test(N)
    sims = [similarity(d, _field(jpeg(draw(d, noise=6), 20))) for d in x]
    assert float(np.mean(sims)) >= 0.95


@pytest.mark.parametrize("kwargs", [{}, {"ink": (240, 240, 240), "paper": (10, 10, 10)}, {"centre": (0.8, 0.25)}])
def test_output_is_white_on_black_boxed_and_centred(kwargs):
    x, _ = mnist_test(N)
    for d in x:
        f = _field(draw(d, **kwargs))
        assert f.dtype == np.uint8 and f.shape == (FIELD, FIELD)
        border = np.concatenate([f[:2].ravel(), f[-2:].ravel(), f[:, :2].ravel(), f[:, -2:].ravel()])
        assert (border > 64).mean() < 0.05  # black background (the 20x20 box leaves about 4 pixels each side)
        assert f.max() == 255  # saturated ink like MNIST's
        ys, xs = np.nonzero(f > 0)
        assert max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 <= BOX + 1
        cy, cx = centre_of_mass(f)
        assert abs(cy - 14) <= 0.75 and abs(cx - 14) <= 0.75  # MNIST's centres of mass average (14.0, 14.0)


def test_polarity_is_found_both_ways():
    x, _ = mnist_test(N)
    for d in x:
        dark = _field(draw(d))
        light = _field(draw(d, ink=(235, 235, 235), paper=(25, 25, 25)))
        assert similarity(dark, light) > 0.97


def test_specks_and_a_table_edge_are_ignored():
    x, _ = mnist_test(N)
    sims = []
    for i, d in enumerate(x):
        img = draw(d, height=0.35, centre=(0.55, 0.5))
        img[:, :25] = (40, 30, 25)  # dark table beside the sheet, touching the frame border
        rng = np.random.default_rng(i)
        for yy, xx in rng.integers(40, 260, (6, 2)):  # pen dots far from the digit
            if abs(xx - 165) > 70 or abs(yy - 150) > 70:
                img[yy : yy + 3, xx : xx + 3] = 20
        sims.append(similarity(normalise_digit(d), _field(img)))
    assert float(np.mean(sims)) >= 0.93, np.round(sims, 2)


def test_blank_and_uniform_images_give_an_empty_field():
    for value in (0, 128, 255):
        assert not normalise_digit(np.full((50, 70), value, np.uint8)).any()


def test_transparent_canvas_drawing_keeps_its_strokes():
    x, _ = mnist_test(5)
    for d in x:
        rgba = np.zeros((140, 140, 4), np.uint8)  # black strokes on a fully transparent canvas
        big = np.asarray(Image.fromarray(d).resize((140, 140), Image.Resampling.BICUBIC))
        rgba[..., 3] = big
        assert similarity(normalise_digit(d), normalise_digit(gray_for_digit(Image.fromarray(rgba, "RGBA")))) > 0.93


def test_mnist_digits_pass_through_unchanged():
    """A digit already in MNIST's form is the model's own input: every one of the 10,000 test digits comes back
    byte for byte (re-rendering them cost LeNet-5 one point of accuracy through Classify: 98.57 % vs 99.56 %)."""
    x, _ = mnist_test(10_000)
    assert len(x) == 10_000
    changed = [i for i, d in enumerate(x) if not np.array_equal(normalise_digit(d), d)]
    assert changed == []


def _shifted(d: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The digit moved by (dy, dx) pixels on a black field (no wrap-around)."""
    out = np.zeros_like(d)
    h, w = d.shape
    out[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = d[
        max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)
    ]
    return out


@pytest.mark.parametrize("shift", [(4, 0), (0, -4), (3, 3)])
def test_an_off_centre_28x28_digit_is_still_normalised(shift):
    """The pass-through takes only centred fields: a 28x28 digit moved off the centre is found and centred.
    (Digits the shift pushes against the frame are left out: ink touching the border reads as a paper edge.)"""
    x, _ = mnist_test(N)
    sims = []
    for d in x:
        moved = _shifted(d, *shift)
        frame = np.concatenate([moved[0], moved[-1], moved[:, 0], moved[:, -1]])
        if int(moved.sum()) != int(d.sum()) or frame.any():
            continue
        out = normalise_digit(moved)
        assert not np.array_equal(out, moved)
        cy, cx = centre_of_mass(out)
        assert abs(cy - FIELD / 2) <= 1.0 and abs(cx - FIELD / 2) <= 1.0
        sims.append(similarity(d, out))
    assert len(sims) >= 2 and float(np.median(sims)) > 0.9, sims


def test_dark_on_light_28x28_is_not_passed_through():
    """Polarity still counts at 28x28: black ink on white is inverted, not passed through."""
    x, _ = mnist_test(N)
    sims = [similarity(d, normalise_digit(255 - d)) for d in x]
    assert float(np.mean(sims)) > 0.85


def test_a_digit_touching_the_frame_beats_a_pen_dot_inside_it():
    """A digit cropped close touches the frame where its strokes end; only a component lying along an edge
    (a paper edge, a table) is a frame artefact. Before, any component touching the frame lost to anything
    inside it, here a pen dot."""
    x, _ = mnist_test(N)
    sims = []
    for d in x:
        ys, xs = np.nonzero(d)
        crop = d[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        img = np.zeros((40, 40), np.uint8)
        img[: crop.shape[0], : crop.shape[1]] = crop  # touching the top and left edges
        img[34:37, 34:37] = 255  # a pen dot, inside the frame
        sims.append(similarity(normalise_digit(d), normalise_digit(img)))
    assert float(np.median(sims)) >= 0.85, np.round(sims, 2)


def test_a_digit_filling_its_frame_still_has_ink():
    """Cropped to its own box, a digit is most of the frame: the background's median and MAD no longer
    describe noise, and the noise floor (capped now) used to rise above every pixel: an empty field."""
    x, _ = mnist_test(N)
    sims = []
    for d in x:
        ys, xs = np.nonzero(d)
        crop = d[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        out = normalise_digit(crop)
        assert out.any(), "no ink found in a digit cropped to its box"
        sims.append(similarity(normalise_digit(d), out))
    # 0.72 on these 20 (the bars of 7s spanning the frame are still taken for paper lines: docs/training.md)
    assert float(np.median(sims)) >= 0.6, np.round(sims, 2)

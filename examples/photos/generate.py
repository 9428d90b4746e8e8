"""Regenerate examples/photos/: MNIST test digits rendered as photos and scans of a digit on paper.

    python examples/photos/generate.py [--count 300] [--out examples/photos] [--mnist DIR]

Deterministic (one seeded generator per image): the same command writes the same bytes. Each image is
one MNIST *test* digit (30 per class, a seeded pick) drawn as pen or pencil ink on synthetic paper:
    paper    white, cream, grey or yellow; grain and blotchy texture; sometimes ruled or squared lines
             and a red margin
    ink      blue / black ballpoint, felt pen, pencil grey, red; stroke width varied (thin pen to marker)
    pose     the digit 15-75 % of the frame height anywhere in a 200-520 px frame, rotated up to 15
             degrees, a mild perspective tilt
    light    a brightness gradient and vignette, sometimes a soft shadow across the sheet, a colour cast
    camera   Gaussian blur, sensor noise, JPEG quality 35-92; a dark table edge in some frames;
             a fifth are flat "scans" (even light, grayscale or colour, little noise)
Names: NNN_L.jpg, L the label. Licence: CC BY-SA 3.0 (derived from MNIST), see README.md here.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
INKS = {  # BGR-free: RGB colours, opacity
    "blue": ((25, 45, 150), 0.92), "black": ((25, 25, 30), 0.95), "pencil": ((80, 80, 88), 0.7),
    "felt": ((15, 20, 60), 0.97), "red": ((170, 30, 35), 0.9),
}
PAPERS = [(245, 244, 238), (250, 248, 240), (238, 232, 215), (226, 226, 224), (250, 240, 170)]


def load_test_digits(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    sys.path.insert(0, str(ROOT))
    from training.data import read_idx

    x = read_idx(next(mnist_dir.glob("t10k-images-idx3-ubyte*")))
    y = read_idx(next(mnist_dir.glob("t10k-labels-idx1-ubyte*")))
    return x, y


def pick(y: np.ndarray, count: int, seed: int = 17) -> np.ndarray:
    """count test indices, the same number per class, a seeded choice, in a seeded order."""
    rng = np.random.default_rng(seed)
    per = math.ceil(count / 10)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), per, replace=False) for c in range(10)])
    return rng.permutation(idx)[:count]


def _smooth_noise(rng, h, w, cells, amp):
    n = rng.normal(0, 1, (max(2, h // cells), max(2, w // cells))).astype(np.float32)
    return cv2.resize(n, (w, h), interpolation=cv2.INTER_CUBIC) * amp


def paper(rng, h, w) -> np.ndarray:
    """float32 RGB (h, w, 3) in 0..255."""
    base = np.array(PAPERS[rng.integers(len(PAPERS))], np.float32)
    img = np.ones((h, w, 3), np.float32) * base
    img += _smooth_noise(rng, h, w, 40, rng.uniform(1, 5))[..., None]  # blotches
    img += rng.normal(0, rng.uniform(1, 4), (h, w, 1)).astype(np.float32)  # grain
    kind = rng.choice(["plain", "ruled", "squared"], p=[0.5, 0.25, 0.25])
    if kind != "plain":
        step = int(rng.uniform(0.06, 0.12) * h)
        off = int(rng.integers(0, step))
        colour = np.array([(150, 180, 220), (170, 170, 175), (140, 170, 200)][rng.integers(3)], np.float32)
        alpha = rng.uniform(0.35, 0.7)
        thick = int(rng.integers(1, 3))
        lines = np.zeros((h, w), np.float32)
        for yy in range(off, h, step):
            cv2.line(lines, (0, yy), (w - 1, yy), 1.0, thick)
        if kind == "squared":
            for xx in range(off, w, step):
                cv2.line(lines, (xx, 0), (xx, h - 1), 1.0, thick)
        if rng.random() < 0.3:  # red margin
            xm = int(rng.uniform(0.05, 0.2) * w)
            m = np.zeros((h, w), np.float32)
            cv2.line(m, (xm, 0), (xm, h - 1), 1.0, 2)
            img = img * (1 - 0.5 * m[..., None]) + np.array([220, 80, 80], np.float32) * 0.5 * m[..., None]
        a = (lines * alpha)[..., None]
        img = img * (1 - a) + colour * a
    return img


def ink_alpha(rng, digit: np.ndarray, h: int, w: int) -> np.ndarray:
    """The digit as ink coverage (0..1) in an (h, w) frame: scaled, stroke-varied, rotated, placed."""
    frac = rng.uniform(0.15, 0.75)
    size = max(24, int(frac * min(h, w) * 28 / 20))  # the 28-pixel MNIST field, its 20-pixel digit at frac
    a = cv2.resize(digit.astype(np.float32) / 255.0, (size, size), interpolation=cv2.INTER_CUBIC)
    a = np.clip((a - 0.35) * 3.0, 0, 1)  # hard-edged strokes like pen on paper
    scale = size / 28.0
    style = rng.choice(["thin", "normal", "thick"], p=[0.35, 0.45, 0.2])
    if style == "thin" and scale > 4:
        k = int(max(1, scale * rng.uniform(0.2, 0.4)))
        a = cv2.erode(a, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    elif style == "thick":
        k = int(max(1, scale * rng.uniform(0.15, 0.4)))
        a = cv2.dilate(a, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    angle = rng.uniform(-15, 15)
    m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
    a = cv2.warpAffine(a, m, (size, size))
    out = np.zeros((h, w), np.float32)
    margin = int(0.1 * size)
    y0 = int(rng.integers(-margin, max(-margin + 1, h - size + margin)))
    x0 = int(rng.integers(-margin, max(-margin + 1, w - size + margin)))
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(h, y0 + size), min(w, x0 + size)
    out[ys:ye, xs:xe] = a[ys - y0:ye - y0, xs - x0:xe - x0]
    return out


def perspective(rng, img: np.ndarray, amount: float) -> np.ndarray:
    h, w = img.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = src + rng.uniform(-amount, amount, (4, 2)).astype(np.float32) * np.float32([w, h])
    return cv2.warpPerspective(img, cv2.getPerspectiveTransform(src, dst), (w, h), borderMode=cv2.BORDER_REFLECT)


def lighting(rng, h, w) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    g = ((xx / w - 0.5) * np.cos(ang) + (yy / h - 0.5) * np.sin(ang)) * rng.uniform(0.1, 0.6)
    r = np.hypot(xx / w - rng.uniform(0.3, 0.7), yy / h - rng.uniform(0.3, 0.7))
    light = 1.0 + g - r * rng.uniform(0.0, 0.5)
    if rng.random() < 0.35:  # a soft shadow (a hand, a phone) over part of the sheet
        pts = (rng.uniform(0, 1, (4, 2)) * [w, h]).astype(np.int32)
        pts[0] = [rng.choice([0, w - 1]), rng.integers(0, h)]
        sh = np.zeros((h, w), np.float32)
        cv2.fillPoly(sh, [cv2.convexHull(pts)], 1.0)
        sh = cv2.GaussianBlur(sh, (0, 0), rng.uniform(0.02, 0.07) * min(h, w))  # penumbra
        light *= 1 - sh * rng.uniform(0.15, 0.4)
    return np.clip(light, 0.35, 1.2)


def render(rng, digit: np.ndarray) -> np.ndarray:
    """One uint8 RGB photo or scan of `digit` (28x28 MNIST, white on black)."""
    h, w = int(rng.integers(200, 521)), int(rng.integers(200, 521))
    scan = rng.random() < 0.2
    img = paper(rng, h, w)
    alpha = ink_alpha(rng, digit, h, w)
    name = list(INKS)[rng.choice(len(INKS), p=[0.35, 0.25, 0.2, 0.1, 0.1])]
    colour, opacity = INKS[name]
    if name == "pencil":  # graphite: grainy coverage
        alpha = alpha * np.clip(rng.normal(1.0, 0.25, alpha.shape), 0.3, 1.0).astype(np.float32)
    a = (alpha * opacity)[..., None]
    img = img * (1 - a) + np.array(colour, np.float32) * a
    if not scan:
        img = perspective(rng, img, 0.05)
        img *= lighting(rng, h, w)[..., None]
        img *= rng.uniform(0.85, 1.1, 3).astype(np.float32)  # white balance
        if rng.random() < 0.2:  # the table beside the sheet
            edge = int(rng.uniform(0.04, 0.15) * (w if rng.random() < 0.5 else h))
            side = int(rng.integers(4))
            table = np.array([(60, 45, 35), (30, 30, 32), (120, 100, 80)][rng.integers(3)], np.float32)
            sl = [(slice(None), slice(0, edge)), (slice(None), slice(w - edge, w)),
                  (slice(0, edge), slice(None)), (slice(h - edge, h), slice(None))][side]
            img[sl] = table + rng.normal(0, 4, img[sl].shape)
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.6))
        img += rng.normal(0, rng.uniform(2, 8), img.shape).astype(np.float32)
    else:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.8))
        if rng.random() < 0.5:
            img = img.mean(axis=2, keepdims=True).repeat(3, axis=2)
    return np.clip(img, 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    ap.add_argument("--mnist", default=str(ROOT / "data" / "mnist"))
    args = ap.parse_args(argv)
    x, y = load_test_digits(Path(args.mnist))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*_*.jpg"):
        old.unlink()
    total = 0
    for n, i in enumerate(pick(y, args.count)):
        rng = np.random.default_rng([2026, int(i)])
        img = render(rng, x[i])
        quality = int(rng.integers(35, 93))
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        (out / f"{n:03d}_{int(y[i])}.jpg").write_bytes(buf.tobytes())
        total += len(buf)
    print(f"wrote {args.count} images, {total / 1e6:.1f} MB, to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

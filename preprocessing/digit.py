"""Handwritten-digit normalisation for real images: a photo or scan of a digit on paper -> an MNIST-style
28x28 field (white ink on black, the digit fitted in a 20x20 box, its centre of mass at the centre).

MNIST was made this way from NIST's binary scans: fit the digit in 20x20 keeping its aspect ratio
(anti-aliasing gives the grey levels), then translate its centre of mass to the centre of 28x28
(LeCun et al.). A photo first needs the binary digit, found here with OpenCV:

0. an image already in MNIST's form (28x28, light digit on a black field, centre of mass at the centre,
   the digit within a 24-pixel box: every one of MNIST's 70,000 digits) is returned as it is: re-rendering
   it through the steps below would only lose its grey levels (LeNet-5 on the 10,000 MNIST test PNGs
   through Classify: 98.57 % re-rendered, 99.56 % passed through, the same as the exported graph);
1. grayscale, working resolution (longest side in [upscale_to, work_side]), slight Gaussian blur
   (noise, JPEG blocks, paper grain);
2. background estimation by grey-level morphology with a window wider than any stroke: closing
   (for dark ink) and opening (for light ink) keep the paper, its lighting gradients and shadows and
   drop the strokes; ink strength = difference to that background (for dark ink relative to the local
   paper brightness, so a shadowed stroke counts like a lit one);
3. polarity: the side (dark-on-light or light-on-dark) with more strongly contrasted pixels;
4. threshold: Otsu on the ink strength, floored by a noise level (median + k MAD) and a fraction of
   the strongest ink;
5. connected components: ruled/squared paper lines spanning the frame removed, specks dropped,
   components lying along the frame border (paper edges, table: in contact with half an edge or more)
   used only if nothing else is there (a digit cropped close, which only touches the frame where its
   strokes end, stays a candidate);
   the main component (most ink) plus nearby large pieces (a broken stroke, a detached bar);
6. stroke width normalised (2 * area / perimeter; a thin pen on a large digit is dilated towards
   MNIST's stroke width in the 20x20 box), crop, fit in 20x20 (INTER_AREA: anti-aliased grey levels),
   centre of mass to the centre of the 28x28 field.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FIELD = 28  # output side (MNIST)
BOX = 20  # the digit's longest side inside the field (MNIST)


@dataclass(frozen=True)
class DigitConfig:
    work_side: int = 320  # longest side the search runs at; larger images are shrunk first (speed)
    upscale_to: int = 64  # smaller images are enlarged to this longest side first (smooth masks)
    blur_fraction: float = 1 / 300  # Gaussian sigma as a fraction of the working longest side (min 0.6 px)
    window_fraction: float = 1 / 5  # first background window, as a fraction of the longest side (min 7 px)
    window_strokes: float = 4.0  # second background window, in stroke widths (min 7 px)
    noise_k: float = 5.0  # ink threshold >= median + noise_k * 1.4826 * MAD of the ink strength
    min_fraction_of_peak: float = 0.3  # ink threshold >= this fraction of the strongest ink (99.9th pct)
    max_noise_fraction: float = 0.6  # ... and the noise term never asks for more than this fraction of it
    line_span: float = 0.85  # a straight run this long (fraction of the frame side) is a paper line
    edge_contact: float = 0.5  # a component lying along this fraction of a frame edge is a paper edge or table
    speck_fraction: float = 0.03  # components with less area than this fraction of the largest are specks
    group_margin: float = 0.35  # pieces within this fraction of the digit's size join it
    group_min_fraction: float = 0.08  # ... when their area is at least this fraction of the main piece
    target_stroke: float = 2.2  # MNIST-like stroke width in output pixels at the 20x20 box scale
    thin_ratio: float = 0.7  # strokes thinner than target * thin_ratio are thickened


DEFAULT = DigitConfig()


def _odd(n: float) -> int:
    n = max(3, int(round(n)))
    return n if n % 2 else n + 1


def dark_ink(g: np.ndarray) -> bool:
    """Polarity: True for dark ink on light paper. The background is what a coarse median keeps (ink of
    either polarity is a minority in each window); the ink is the side with more strongly deviating pixels."""
    h, w = g.shape
    f = 64.0 / max(h, w)
    small = cv2.resize(g, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA) if f < 1 else g
    k = _odd(max(small.shape) / 3)
    m = k // 2  # mirrored margins: medianBlur alone replicates the edge row, and a dark table edge would
    padded = cv2.copyMakeBorder(np.clip(small, 0, 255).astype(np.uint8), m, m, m, m, cv2.BORDER_REFLECT_101)
    bg = cv2.medianBlur(padded, k)[m:-m, m:-m].astype(np.float32)  # then look like light ink beside it
    d = small - bg
    t = 0.5 * max(float(np.abs(d).max()), 1e-3)
    return _inner_count(d < -t) >= _inner_count(d > t)


def _inner_count(binary: np.ndarray) -> int:
    """Pixels of the components that do not touch the frame border (a table edge, the dark band beside
    it); all pixels when every component touches it."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    h, w = binary.shape
    x0, y0 = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_TOP]
    x1, y1 = x0 + stats[1:, cv2.CC_STAT_WIDTH], y0 + stats[1:, cv2.CC_STAT_HEIGHT]
    area = stats[1:, cv2.CC_STAT_AREA]
    inner = (x0 > 0) & (y0 > 0) & (x1 < w) & (y1 < h)
    return int(area[inner].sum()) if inner.any() else int(area.sum())


def smoothed(gray: np.ndarray, cfg: DigitConfig = DEFAULT) -> np.ndarray:
    """uint8 grayscale with a slight Gaussian blur (noise, JPEG blocks, paper grain)."""
    return cv2.GaussianBlur(gray, (0, 0), max(0.6, max(gray.shape) * cfg.blur_fraction))


def strength(g: np.ndarray, dark: bool, k: int) -> np.ndarray:
    """Ink strength (float32, 0..255) against a background estimated with a k x k window: closing keeps
    the paper (its lighting, and shadows wider than k) and drops dark strokes narrower than k; opening
    does the same for light ink. Dark ink counts relative to the local paper brightness."""
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    box = (k // 2 | 1, k // 2 | 1)
    gf = g.astype(np.float32)
    if dark:
        bg = cv2.blur(cv2.morphologyEx(g, cv2.MORPH_CLOSE, kernel), box).astype(np.float32)
        return np.maximum(bg - gf, 0) * (255.0 / np.maximum(bg, 48.0))
    bg = cv2.blur(cv2.morphologyEx(g, cv2.MORPH_OPEN, kernel), box).astype(np.float32)
    return np.maximum(gf - bg, 0)


def ink_strength(gray: np.ndarray, cfg: DigitConfig = DEFAULT) -> tuple[np.ndarray, bool, float]:
    """(ink strength of the working-resolution image, dark_ink, stroke width), in two passes: a window of
    window_fraction of the frame finds the ink whatever its stroke width; a second window of
    window_strokes x the stroke width found then keeps shadows and stains wider than that out of it."""
    g = smoothed(gray, cfg)
    dark = dark_ink(g)
    k1 = _odd(max(7.0, max(g.shape) * cfg.window_fraction))
    s = strength(g, dark, k1)
    width = typical_stroke_width(ink_mask(s, cfg))
    if width > 0:
        k2 = _odd(min(k1, max(7.0, cfg.window_strokes * width)))
        if k2 < k1:
            s = strength(g, dark, k2)
    return s, dark, width


def typical_stroke_width(mask: np.ndarray) -> float:
    """Stroke width of the thinner structures in a mask: 2 x a low percentile of the distance transform on
    its ridges (the skeleton of a stroke of width w lies w/2 from its edges; wide blobs such as shadows
    have few ridge pixels per area and fall above the percentile). 0 for an empty mask."""
    if not mask.any():
        return 0.0
    dt = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    ridge = (dt > 0) & (dt >= cv2.dilate(dt, np.ones((3, 3), np.uint8)))
    values = dt[ridge]
    if not values.size:
        return 0.0
    return 2.0 * float(np.partition(values, int(0.35 * (values.size - 1)))[int(0.35 * (values.size - 1))])


def _hist(a: np.ndarray) -> np.ndarray:
    return cv2.calcHist([a], [0], None, [256], [0, 256]).ravel()


def _quantile(hist: np.ndarray, q: float) -> float:
    """q-quantile (0..1) of the values whose histogram (bins 0..255) is `hist` (no sort: O(256))."""
    c = np.cumsum(hist)
    return float(np.searchsorted(c, q * c[-1], side="left"))


def ink_mask(s: np.ndarray, cfg: DigitConfig = DEFAULT) -> np.ndarray:
    """Binary (uint8 0/1) ink from the strength image: above Otsu's threshold, above the noise (median +
    noise_k MADs) and above min_fraction_of_peak of the strongest ink (its 99.9th percentile)."""
    s_max = float(s.max())
    if s_max <= 1.0:
        return np.zeros(s.shape, np.uint8)
    raw = np.clip(s, 0, 255).astype(np.uint8)
    peak = max(_quantile(_hist(raw), 0.999), 0.5 * s_max, 1.0)
    s8 = cv2.convertScaleAbs(s, alpha=255.0 / peak)  # saturating: 0..255 relative to the peak
    hist = _hist(s8)
    otsu, _ = cv2.threshold(s8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    med = _quantile(hist, 0.5)
    dev = np.abs(np.arange(256) - med).astype(np.int64)  # |value - median| per bin: the MAD's histogram
    mad = _quantile(np.bincount(dev, weights=hist, minlength=256), 0.5)
    # the median and MAD describe the background's noise only while ink is a small minority; a digit filling its
    # frame (cropped to its own box) widens them until "median + MADs" lies above every pixel: capped
    noise = min(med + cfg.noise_k * 1.4826 * mad, 255.0 * cfg.max_noise_fraction)
    t = max(float(otsu), noise, 255.0 * cfg.min_fraction_of_peak)
    return (s8 > t).astype(np.uint8)


def _remove_lines(mask: np.ndarray, cfg: DigitConfig) -> np.ndarray:
    h, w = mask.shape
    lines = np.zeros_like(mask)
    rows, cols = mask.sum(axis=1, dtype=np.int32), mask.sum(axis=0, dtype=np.int32)
    for kw, kh, run in ((int(w * cfg.line_span), 1, rows), (1, int(h * cfg.line_span), cols)):
        if max(kw, kh) >= 8 and int(run.max()) >= max(kw, kh):  # only where a row/column holds that much ink
            lines |= cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (kw, kh)))
    if not lines.any():
        return mask
    near_lines = cv2.dilate(lines, np.ones((3, 3), np.uint8)).astype(np.uint8, copy=False)  # uint8 in, uint8 out
    return mask & ~near_lines & 1


def select_digit(mask: np.ndarray, s: np.ndarray, cfg: DigitConfig = DEFAULT) -> np.ndarray:
    """The digit's pixels (uint8 0/1): main component and the pieces that belong to it."""
    mask = _remove_lines(mask, cfg)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return np.zeros_like(mask)
    h, w = mask.shape
    area = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    x0, y0 = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_TOP]
    x1, y1 = x0 + stats[1:, cv2.CC_STAT_WIDTH], y0 + stats[1:, cv2.CC_STAT_HEIGHT]
    mass = np.bincount(labels.ravel(), weights=(s * s).ravel(), minlength=n)[1:]  # strong ink over soft shadows
    ok = area >= max(2.0, cfg.speck_fraction * area.max())
    # a component is a frame artefact (paper edge, table, shadow band) when it runs along an edge of the frame
    # (its largest share of one edge's pixels); a digit cropped close only touches the edges where strokes end
    contact = np.zeros(n - 1, np.float64)
    for line, side in ((labels[0], w), (labels[-1], w), (labels[:, 0], h), (labels[:, -1], h)):
        contact = np.maximum(contact, np.bincount(line, minlength=n)[1:] / side)
    digit_like = ok & (contact < cfg.edge_contact)
    cand = digit_like if digit_like.any() else ok
    main = int(np.argmax(np.where(cand, mass, -1.0)))
    keep = {main}
    bx0, by0, bx1, by1 = x0[main], y0[main], x1[main], y1[main]
    pieces = [int(i) for i in np.flatnonzero(cand & (area >= cfg.group_min_fraction * area[main]))]
    for _ in range(3):
        grown = False
        m = cfg.group_margin * max(bx1 - bx0, by1 - by0)
        for i in pieces:
            if i in keep:
                continue
            gap_x = max(0, bx0 - x1[i], x0[i] - bx1)
            gap_y = max(0, by0 - y1[i], y0[i] - by1)
            if gap_x <= m and gap_y <= m:
                keep.add(int(i))
                bx0, by0 = min(bx0, x0[i]), min(by0, y0[i])
                bx1, by1 = max(bx1, x1[i]), max(by1, y1[i])
                grown = True
        if not grown:
            break
    lut = np.zeros(n, np.uint8)
    lut[[i + 1 for i in keep]] = 1
    return lut[labels]


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in pixels: 2 * area / perimeter (a stroke of length L, width w: 2wL / 2L)."""
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, True) for c in contours)
    return 2.0 * float(mask.sum()) / perimeter if perimeter > 0 else 0.0


def fit_field(mask: np.ndarray, cfg: DigitConfig = DEFAULT) -> np.ndarray:
    """Binary digit (any size) -> uint8 28x28: crop, stroke width, 20x20 box, centre of mass centred."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.zeros((FIELD, FIELD), np.uint8)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    side = max(crop.shape)
    scale = BOX / side
    width = stroke_width(crop)
    if width * scale < cfg.target_stroke * cfg.thin_ratio:  # thin pen on a big digit: thicken towards MNIST
        grow = int(round((cfg.target_stroke / scale - width) / 2))
        if grow >= 1:
            pad = grow + 1
            crop = cv2.dilate(np.pad(crop, pad), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1,) * 2))
            ys, xs = np.nonzero(crop)
            crop = crop[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            side = max(crop.shape)
            scale = BOX / side
    ch, cw = crop.shape
    nh, nw = max(1, int(round(ch * scale))), max(1, int(round(cw * scale)))
    interp = cv2.INTER_AREA if side >= BOX else cv2.INTER_LINEAR
    small = cv2.resize(crop.astype(np.float32), (nw, nh), interpolation=interp)
    total = float(small.sum())
    if total <= 0:
        return np.zeros((FIELD, FIELD), np.uint8)
    gy, gx = np.indices(small.shape)
    cy, cx = float((gy * small).sum()) / total, float((gx * small).sum()) / total
    oy, ox = int(round(FIELD / 2 - cy)), int(round(FIELD / 2 - cx))  # (14, 14): where MNIST puts it (measured)
    out = np.zeros((FIELD, FIELD), np.float32)
    ty0, tx0 = max(0, oy), max(0, ox)
    ty1, tx1 = min(FIELD, oy + nh), min(FIELD, ox + nw)
    if ty1 > ty0 and tx1 > tx0:
        out[ty0:ty1, tx0:tx1] = small[ty0 - oy : ty1 - oy, tx0 - ox : tx1 - ox]
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def working_image(gray: np.ndarray, cfg: DigitConfig = DEFAULT) -> np.ndarray:
    h, w = gray.shape
    side = max(h, w)
    if side > cfg.work_side:
        f = cfg.work_side / side
        interp = cv2.INTER_AREA if f <= 0.5 else cv2.INTER_LINEAR  # the blur that follows smooths the rest
        return cv2.resize(gray, (max(1, round(w * f)), max(1, round(h * f))), interpolation=interp)
    if side < cfg.upscale_to:
        f = cfg.upscale_to / side
        return cv2.resize(gray, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_LINEAR)
    return gray


def is_mnist_field(gray: np.ndarray) -> bool:
    """True for a uint8 image already in MNIST's form: 28x28, a black field (median <= 8), ink (max >= 96)
    whose centre of mass lies within 2.5 pixels of the centre and whose pixels above 32 fit in 24x24."""
    if gray.shape != (FIELD, FIELD) or int(gray.max()) < 96 or float(np.median(gray)) > 8:
        return False
    f = gray.astype(np.float32)
    total = float(f.sum())
    gy, gx = np.indices(gray.shape)
    cy, cx = float((gy * f).sum()) / total, float((gx * f).sum()) / total
    centre = (FIELD - 1) / 2  # 13.5: MNIST's centres of mass lie in [13.5, 14.5] (all 70,000)
    if abs(cy - centre) > 2.5 or abs(cx - centre) > 2.5:
        return False
    ys, xs = np.nonzero(gray > 32)
    return int(ys.max() - ys.min()) < 24 and int(xs.max() - xs.min()) < 24


def normalise_digit(gray: np.ndarray, cfg: DigitConfig = DEFAULT) -> np.ndarray:
    """uint8 grayscale (H, W) photo/scan/drawing of one digit -> uint8 (28, 28), white ink on black.
    An image already in MNIST's form comes back as it is (`is_mnist_field`); one with no ink gives an
    all-black field."""
    if gray.ndim != 2:
        raise ValueError(f"normalise_digit takes a 2-D grayscale array, got shape {gray.shape}")
    if gray.dtype != np.uint8:
        gray = np.clip(gray, 0, 255).astype(np.uint8)
    if is_mnist_field(gray):
        return gray
    work = working_image(gray, cfg)
    s, _, width = ink_strength(work, cfg)
    digit = select_digit(ink_mask(s, cfg), s, cfg)
    return fit_field(digit, cfg)

"""How the digit normalisation (preprocessing/digit.py) copes with the way people crop digits: MNIST test
digits cropped to their own box (no margin), with small margins, pushed against the frame, inverted as on
paper; and the photos in examples/photos. Offline: the normalisation and the exported ONNX model, no server.

    python -m bench.digit_crops --model REPO/lenet5-digits/1/model.onnx [--n 2000]

Prints a Markdown table: accuracy (top-1 against the label) per case, and ms per image for the
normalisation. Found with it (2026-12-02, bench/results/digit_crops.md): a digit cropped to its own box scored
54-62 % with LeNet-5 against 96.7 % with a 2-pixel margin and 99.4 % with 6 (71-80 % since the frame-contact
rule and the capped noise floor in preprocessing/digit.py): the steps that find the ink lean on a margin of paper round the digit.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tight(img: np.ndarray, margin: int = 0) -> np.ndarray:
    """The digit cropped to its bounding box, then `margin` black pixels around it."""
    ys, xs = np.nonzero(img > 0)
    return np.pad(img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], margin)


def to_left(img: np.ndarray) -> np.ndarray:
    return np.roll(img, -int(np.nonzero(img.max(0))[0].min()), axis=1)


def to_corner(img: np.ndarray) -> np.ndarray:
    return np.roll(to_left(img), -int(np.nonzero(img.max(1))[0].min()), axis=0)


CASES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "as in MNIST (28x28, passed through)": lambda a: a,
    "6-pixel margin, dark on white": lambda a: 255 - np.pad(a, 6),
    "cropped to its box, 2-pixel margin": lambda a: tight(a, 2),
    "cropped to its box, no margin": lambda a: tight(a, 0),
    "cropped to its box, no margin, dark on white": lambda a: 255 - tight(a, 0),
    "28x28, pushed to the left edge": to_left,
    "28x28, pushed to the top-left corner": to_corner,
}


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort
    from PIL import Image

    from bench.served_accuracy import photos
    from preprocessing.digit import normalise_digit
    from preprocessing.image import gray_for_digit
    from server.repository import METADATA_KEY
    from training.data import load_idx_split, verify_mnist

    p = argparse.ArgumentParser(prog="python -m bench.digit_crops", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="an exported digit model (model.onnx)")
    p.add_argument("--n", type=int, default=2000, help="MNIST test digits per case (the first N)")
    a = p.parse_args(argv)
    sess = ort.InferenceSession(str(a.model), providers=["CPUExecutionProvider"])
    md = json.loads(sess.get_modelmeta().custom_metadata_map[METADATA_KEY])
    mean, std = float(md["preprocessing"]["mean"][0]), float(md["preprocessing"]["std"][0])
    inp, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name

    def predict(fields: list[np.ndarray]) -> np.ndarray:
        x = ((np.stack(fields).astype(np.float32) / 255.0 - mean) / std)[:, None]
        return np.concatenate([sess.run([out], {inp: x[i : i + 500]})[0].argmax(1) for i in range(0, len(x), 500)])

    x, y = load_idx_split(verify_mnist(), "test")
    digits, labels = x[: a.n, 0].numpy(), y[: a.n].numpy()
    rows = []
    for name, case in CASES.items():
        images = [case(d) for d in digits]
        t0 = time.perf_counter()
        fields = [normalise_digit(i) for i in images]
        ms = (time.perf_counter() - t0) / len(images) * 1e3
        rows.append((f"MNIST test, {name}", len(images), float((predict(fields) == labels).mean()), ms))
    encoded, names = photos()  # the same set bench.served_accuracy sends through Classify
    grays = [gray_for_digit(Image.open(io.BytesIO(b))) for b in encoded]
    t0 = time.perf_counter()
    fields = [normalise_digit(g) for g in grays]
    ms = (time.perf_counter() - t0) / len(grays) * 1e3
    truth = np.array([int(n) for n in names])
    rows.append(
        ("examples/photos (photos and scans on paper)", len(grays), float((predict(fields) == truth).mean()), ms)
    )
    print(f"model: {a.model}\n\n| images | n | top-1 | normalisation ms/image |\n|---|---:|---:|---:|")
    for name, n, acc, ms in rows:
        print(f"| {name} | {n:,} | {acc * 100:.2f} % | {ms:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

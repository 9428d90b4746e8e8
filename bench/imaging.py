"""Classify's per-image cost before the model: decode + preprocessing (server/imaging.py), per input kind.

    python -m bench.imaging [--repeats 200] [--json]

Inputs (made here, deterministic): 28x28 grayscale PNGs of MNIST test digits (what `cnn classify` sends
from the MNIST folder) and 400x400 colour JPEG photos of digits on paper (examples/photos resized to
400x400, quality 85). For each: decode alone, decode + plain resize (mode "resize"), decode + the digit
normalisation (mode "digit"). One thread; per-image wall time (median, 90th percentile) and mean CPU
time of the process (process_time: the cost itself, less inflated on a shared machine).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from preprocessing.spec import Preprocessing
from server.imaging import ImageLimits, decode, to_model_input

ROOT = Path(__file__).resolve().parents[1]


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def inputs(n: int = 50) -> dict[str, list[bytes]]:
    from training.data import mnist_dir, read_idx

    digits = read_idx(next(mnist_dir().glob("t10k-images-idx3-ubyte*")))[:n]
    photos = sorted((ROOT / "examples" / "photos").glob("*.jpg"))[:n]
    return {
        "png 28x28 gray": [_encode(Image.fromarray(d, "L"), "PNG") for d in digits],
        "jpeg 400x400 colour": [
            _encode(Image.open(p).convert("RGB").resize((400, 400), Image.Resampling.BILINEAR), "JPEG", quality=85)
            for p in photos
        ],
    }


def _time(fn, data: list[bytes], repeats: int) -> tuple[list[float], list[float]]:
    """(wall ms, CPU ms of this process) per call; the CPU time is what a busy machine does not inflate."""
    for b in data[:5]:  # warm-up (imports, OpenCV's first calls)
        fn(b)
    wall, cpu = [], []
    for i in range(repeats):
        b = data[i % len(data)]
        t0, c0 = time.perf_counter(), time.process_time()
        fn(b)
        cpu.append((time.process_time() - c0) * 1e3)
        wall.append((time.perf_counter() - t0) * 1e3)
    return wall, cpu


def run(repeats: int = 200) -> list[dict]:
    import cv2

    cv2.setNumThreads(1)
    limits = ImageLimits()
    plain = Preprocessing(mode="resize").validate()
    digit = Preprocessing(mode="digit").validate()
    f32 = np.dtype(np.float32)
    steps = {
        "decode": lambda b: decode(b, "image", limits),
        "decode + resize": lambda b: to_model_input(decode(b, "image", limits), plain, f32, "image"),
        "decode + digit": lambda b: to_model_input(decode(b, "image", limits), digit, f32, "image"),
    }
    rows = []
    for kind, data in inputs().items():
        for step, fn in steps.items():
            wall, cpu = _time(fn, data, repeats)
            t = sorted(wall)
            rows.append(
                {
                    "input": kind,
                    "step": step,
                    "median_ms": round(statistics.median(t), 3),
                    "p90_ms": round(t[int(0.9 * (len(t) - 1))], 3),
                    "cpu_ms": round(sum(cpu) / len(cpu), 3),
                    "n": len(t),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = run(args.repeats)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'input':<22}{'step':<18}{'median ms':>10}{'p90 ms':>9}{'CPU ms':>9}")
        for r in rows:
            print(f"{r['input']:<22}{r['step']:<18}{r['median_ms']:>10.3f}{r['p90_ms']:>9.3f}{r['cpu_ms']:>9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Write sample PNGs of HELD-OUT test images: examples/mnist/ (the default model's data) and examples/digits/.

Each file is exactly the 28x28 uint8 grayscale image the model sees (white digit on black), taken from the
fixed test split of its dataset (training/data.py), so no example was ever trained on or used for model
selection. Names are <label>_<index:04d>.png (index = position in the test split; 5 digits for MNIST's
10,000 test images).

    python scripts/make_examples.py [--data mnist|digits] [--per-class 2] [--out DIR]

examples/mnist/ (the README's first commands, the model scripts/run.sh serves) comes from the shipped MNIST
test digits; examples/digits/ (the test suite's small model) from scikit-learn's 8x8 digits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("mnist", "digits"), default="mnist", help="which test split (default mnist)")
    p.add_argument("--per-class", type=int, default=2, help="images per digit (default 2)")
    p.add_argument("--out", default=None, help="output folder (default examples/<data>)")
    args = p.parse_args(argv)

    from PIL import Image

    from training.data import load_digits, load_mnist

    d = load_mnist() if args.data == "mnist" else load_digits()
    width = 5 if args.data == "mnist" else 4
    out = Path(args.out or ROOT / "examples" / args.data)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    written = []
    for label in range(10):
        idx = (d.test_y == label).nonzero().flatten()[: args.per_class]
        for i in idx.tolist():
            path = out / f"{d.labels[label]}_{i:0{width}d}.png"
            Image.fromarray(d.test_x[i, 0].numpy(), mode="L").save(path)  # (28, 28) uint8
            written.append(path.name)
    print(f"wrote {len(written)} held-out test images to {out}: {' '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

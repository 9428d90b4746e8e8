"""Accuracy through a running server, the way a user gets it: the Classification RPC on encoded images.

    python -m bench.served_accuracy --server 127.0.0.1:8001 [--model NAME] [--batch 100] [--json]

Two sets, both sent as files a user would send (one Classify call per `--batch` images, top-1 compared
with the true label):
- the 10,000 MNIST test digits (data/mnist, never trained on or used for model selection) as 28x28 PNGs;
- the photos and scans of digits on paper in examples/photos (`NNN_<label>.jpg`, colour JPEGs).
So decode, the model's preprocessing (plain resize or the digit normalisation its metadata names), the
batcher and onnxruntime are all in the number, not just the exported graph.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def mnist_test_pngs() -> tuple[list[bytes], list[str]]:
    from PIL import Image

    from training.data import load_idx_split, verify_mnist

    x, y = load_idx_split(verify_mnist(), "test")  # (10000, 1, 28, 28) uint8, (10000,)
    images = []
    for img in x[:, 0].numpy():
        buf = io.BytesIO()
        Image.fromarray(img, "L").save(buf, "PNG")
        images.append(buf.getvalue())
    return images, [str(int(v)) for v in y]


def photos() -> tuple[list[bytes], list[str]]:
    files = sorted((ROOT / "examples" / "photos").glob("*_[0-9].jpg"))
    return [f.read_bytes() for f in files], [f.stem.rsplit("_", 1)[1] for f in files]


def accuracy(client, images: list[bytes], labels: list[str], model: str, batch: int) -> dict:
    correct, t0 = 0, time.perf_counter()
    for i in range(0, len(images), batch):
        results = client.classify(images[i : i + batch], top_k=1, model=model)
        correct += sum(r[0].label == t for r, t in zip(results, labels[i : i + batch], strict=True))
    return {
        "images": len(images),
        "correct": correct,
        "accuracy": correct / len(images),
        "seconds": round(time.perf_counter() - t0, 2),
        "model": list(client.last_model),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", default="127.0.0.1:8001", help="gRPC address (default 127.0.0.1:8001)")
    p.add_argument("--model", default="", help="model name (default: the server's default model)")
    p.add_argument("--batch", type=int, default=100, help="images per Classify call (default 100)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    a = p.parse_args(argv)

    from client.classify import ClassificationClient

    out = {}
    with ClassificationClient(a.server, timeout_s=120) as c:
        for name, (images, labels) in (("mnist test (10,000 PNGs)", mnist_test_pngs()), ("examples/photos", photos())):
            out[name] = accuracy(c, images, labels, a.model, a.batch)
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        for name, r in out.items():
            print(
                f"{name}: {r['correct']:,}/{r['images']:,} = {100 * r['accuracy']:.2f} % "
                f"({r['model'][0]} v{r['model'][1]}, {r['seconds']} s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

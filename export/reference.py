"""What a model answers on the test split, recorded by `cnn export` in its metadata (ModelMetadata.reference)
so the server can expose it beside live traffic (server/predictions.py) and Prometheus can alert on drift
(deploy/prometheus/alerts.yml: CnnPredictionClassDrift, CnnConfidenceDrift).

    {"split": "digits:test", "images": 1797,
     "class_share": {label: share of top-1 answers},              # sums to 1
     "confidence_quantiles": {"0.01": ..., "0.5": ...},          # of the top-1 probability
     "confidence_histogram": [share per 0.01-wide bin over 0..1]}  # 100 bins: any threshold's share
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from export import verify

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5)
BINS = 100


def summarise(probs: np.ndarray, labels: list[str], split: str) -> dict[str, Any]:
    """The reference of (images, classes) probabilities."""
    n = len(probs)
    top = probs.argmax(axis=1)
    conf = probs[np.arange(n), top].astype(np.float64)
    counts = np.bincount(top, minlength=len(labels))
    hist, _ = np.histogram(np.clip(conf, 0.0, 1.0), bins=BINS, range=(0.0, 1.0))
    return {
        "split": split,
        "images": int(n),
        "class_share": {label: round(float(c) / n, 6) for label, c in zip(labels, counts.tolist())},
        "confidence_quantiles": {f"{q:g}": round(float(np.quantile(conf, q)), 6) for q in QUANTILES},
        "confidence_histogram": [round(float(h) / n, 6) for h in hist.tolist()],
    }


def reference(path: str | os.PathLike, batches, labels: list[str], split: str, batch_size: int = 64) -> dict[str, Any]:
    """Run the exported file (the bytes that get published) over the test split's (images, labels) batches."""
    sess = verify.ort_session(path)
    probs = [verify.run_batched(sess, x, batch_size)[1] for x, _ in batches]
    return summarise(np.concatenate(probs).reshape(-1, len(labels)), labels, split)

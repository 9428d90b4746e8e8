"""Prediction telemetry (issue 21): what the served models answer, per model and class, beside the test-split
reference that `cnn export` recorded in each model's metadata (ModelMetadata.reference), so a Prometheus rule
can compare live traffic with it (deploy/prometheus/alerts.yml: CnnPredictionClassDrift, CnnConfidenceDrift).

Series (one Prometheus collector; catalogued in docs/operations.md):

    cnn_predictions_total{model, class}                 top-1 answers
    cnn_prediction_confidence{model}                    histogram of the top-1 probability
    cnn_low_confidence_predictions_total{model}         answers whose top-1 probability < the threshold
    cnn_reference_class_share{model, class}             share of each top-1 class on the test split
    cnn_reference_confidence{model, quantile}           quantiles of the top-1 probability on the test split
    cnn_reference_low_confidence_share{model}           share of test-split answers under the threshold

Bounded labels: a model with more than `max_classes` classes reports its `max_classes` most frequent classes
of the reference (or, without one, its first `max_classes` labels) under their names and the rest as one
class "other", live and reference alike; a model's series are the ones of its newest served version.

Cheap: the core (server/core/service.py) hands every answer's probabilities (or logits) over once per
response; each answer is queued by reference (a deque append) and counted in bulk, every 256 answers on the event loop
and before every scrape (one concatenate, argmax and two bincounts for all of them).
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

OTHER = "other"
# Top-1 probabilities: dense near 1 where a healthy classifier answers, coarse below.
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
_BOUNDS = np.array(CONFIDENCE_BUCKETS)  # searchsorted(side="left"): index of the first bucket with c <= bound
FLUSH_EVERY = 256  # answers queued before they are counted on the event loop (a scrape counts the rest first)
REFERENCE_QUANTILES = ("0.01", "0.05", "0.1", "0.25", "0.5")  # keys of reference["confidence_quantiles"]
PROBABILITIES, LOGITS = "probabilities", "logits"  # the output names `cnn export` writes (export/onnx.py)


def low_share(histogram: Sequence[float], threshold: float) -> float:
    """Share of answers with confidence < threshold from a histogram of equal-width bins over [0, 1]
    (reference["confidence_histogram"]); linear inside the bin the threshold cuts."""
    h = np.asarray(histogram, dtype=np.float64)
    if h.size == 0 or h.sum() <= 0:
        return 0.0
    h = h / h.sum()
    pos = min(max(threshold, 0.0), 1.0) * h.size
    whole = int(pos)
    return float(h[:whole].sum() + (h[whole] * (pos - whole) if whole < h.size else 0.0))


class ModelPredictions:
    """One model's counts. `record(probs)` runs on the event loop; the collector copies the arrays."""

    __slots__ = (
        "_lock",
        "_pending",
        "_pending_logits",
        "buckets",
        "conf_sum",
        "counts",
        "low",
        "num_classes",
        "output",
        "reference",
        "slot_of",
        "slots",
        "threshold",
        "version",
    )

    def __init__(
        self,
        labels: Sequence[str],
        output: str | None,
        reference: dict[str, Any] | None,
        threshold: float,
        max_classes: int,
        version: str = "",
    ) -> None:
        self.num_classes = len(labels)
        self.output = output  # the output ModelInfer answers are read from (None: not a classifier's output)
        self.threshold = threshold
        self.version = version
        shares = (reference or {}).get("class_share") or {}
        if self.num_classes > max_classes:
            ranked = sorted(range(self.num_classes), key=lambda i: (-float(shares.get(labels[i], 0.0)), i))
            kept = sorted(ranked[:max_classes])
            self.slots = [labels[i] for i in kept] + [OTHER]
            slot_of = np.full(self.num_classes, len(kept), dtype=np.intp)
            slot_of[kept] = np.arange(len(kept))
        else:
            self.slots = list(labels)
            slot_of = np.arange(self.num_classes, dtype=np.intp)
        self.slot_of = slot_of
        self._pending: collections.deque = collections.deque()  # answers (probabilities) not yet counted
        self._pending_logits: collections.deque = collections.deque()  # answers as logits not yet counted
        self._lock = threading.Lock()  # one flush at a time (event loop or scrape thread)
        self.counts = [0] * len(self.slots)
        self.buckets = [0] * (len(CONFIDENCE_BUCKETS) + 1)  # per bucket, not cumulative
        self.conf_sum = 0.0
        self.low = 0
        self.reference = self._reference(labels, reference) if reference else None

    def _reference(self, labels: Sequence[str], ref: dict[str, Any]) -> dict[str, Any] | None:
        shares = ref.get("class_share") or {}
        per_slot = np.zeros(len(self.slots))
        for i, label in enumerate(labels):
            per_slot[self.slot_of[i]] += float(shares.get(label, 0.0))
        quantiles = {
            q: float(v) for q, v in (ref.get("confidence_quantiles") or {}).items() if q in REFERENCE_QUANTILES
        }
        hist = ref.get("confidence_histogram") or []
        return {
            "share": per_slot if shares else None,
            "quantiles": quantiles,
            "low": low_share(hist, self.threshold) if hist else None,
        }

    def record(self, probs: np.ndarray) -> None:
        """Answers (rows, classes) of probabilities: queued by reference, counted in bulk every FLUSH_EVERY
        answers and before every scrape (one concatenate + argmax for many one-row answers costs a fraction of
        an argmax per answer). Called on the event loop; deque.append is thread-safe."""
        self._pending.append(probs)
        if len(self._pending) >= FLUSH_EVERY:
            self.flush()

    def record_logits(self, logits: np.ndarray) -> None:
        """As `record`, for logits."""
        self._pending_logits.append(logits)
        if len(self._pending_logits) >= FLUSH_EVERY:
            self.flush()

    def record_outputs(self, outputs: dict[str, np.ndarray]) -> None:
        """A ModelInfer answer (every output of the model): counted only from a classifier's output."""
        if self.output is not None:
            arr = outputs.get(self.output)
            if arr is not None:
                (self._pending_logits if self.output == LOGITS else self._pending).append(arr)
                if len(self._pending) >= FLUSH_EVERY or len(self._pending_logits) >= FLUSH_EVERY:
                    self.flush()

    def flush(self) -> None:
        """Count the queued answers (the event loop every FLUSH_EVERY answers; the scrape thread before reading)."""
        with self._lock:
            for pending, is_logits in ((self._pending, False), (self._pending_logits, True)):
                if not pending:
                    continue
                arrays = [pending.popleft() for _ in range(len(pending))]  # only a flush pops, under the lock
                try:
                    x = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
                    ok = x.ndim == 2 and x.shape[1] == self.num_classes
                except ValueError:  # shapes differ (an older version with other classes answered too)
                    ok = False
                if not ok:
                    arrays = [a.reshape(len(a), -1) for a in arrays if a.ndim >= 1]
                    arrays = [a for a in arrays if a.shape[1] == self.num_classes]
                    if not arrays:
                        continue
                    x = np.concatenate(arrays)
                if len(x):
                    self._add_rows(x, is_logits)

    def _add_rows(self, x: np.ndarray, is_logits: bool) -> None:
        top = x.argmax(axis=1)
        best = x[np.arange(len(top)), top]
        if is_logits:  # the top-1 probability of a softmax: 1 / sum(exp(logits - max))
            conf = 1.0 / np.exp(x.astype(np.float64) - best[:, None].astype(np.float64)).sum(axis=1)
        else:
            conf = best.astype(np.float64)
        total = float(conf.sum())
        if total != total:  # NaN rows (non-finite inputs give NaN answers) are not predictions
            keep = ~np.isnan(conf)
            top, conf = top[keep], conf[keep]
            total = float(conf.sum())
        counts, buckets = self.counts, self.buckets
        for i, n in enumerate(np.bincount(self.slot_of[top], minlength=len(counts)).tolist()):
            if n:
                counts[i] += n
        for i, n in enumerate(np.bincount(np.searchsorted(_BOUNDS, conf), minlength=len(buckets)).tolist()):
            if n:
                buckets[i] += n
        self.conf_sum += total
        self.low += int(np.count_nonzero(conf < self.threshold))


class PredictionTelemetry(Collector):
    """Every model's ModelPredictions, exposed as one collector on the server's registry."""

    def __init__(
        self, registry: CollectorRegistry | None = None, low_confidence_threshold: float = 0.5, max_classes: int = 32
    ) -> None:
        self.threshold = float(low_confidence_threshold)
        self.max_classes = int(max_classes)
        self.models: dict[str, ModelPredictions] = {}
        if registry is not None:
            registry.register(self)

    def configure(
        self,
        model: str,
        labels: Sequence[str],
        output_names: Iterable[str],
        reference: dict[str, Any] | None,
        version: str = "",
    ) -> ModelPredictions:
        """A version of `model` is swapped in: its class slots and reference. Counts carry over when the classes
        are the same (a counter must not go back); a version with other classes starts new series."""
        names = set(output_names)
        output = PROBABILITIES if PROBABILITIES in names else LOGITS if LOGITS in names else None
        new = ModelPredictions(labels, output, reference, self.threshold, self.max_classes, version)
        old = self.models.get(model)
        if old is not None and old.slots == new.slots and old.num_classes == new.num_classes:
            old.flush()
            new.counts, new.buckets, new.conf_sum, new.low = old.counts, old.buckets, old.conf_sum, old.low
        self.models[model] = new
        return new

    def get(self, model: str) -> ModelPredictions | None:
        return self.models.get(model)

    def describe(self) -> list:
        return []  # collected on every scrape; no fixed description (models come and go)

    def collect(self) -> Iterable:
        preds = CounterMetricFamily(
            "cnn_predictions",
            "Top-1 answers by model and class (classes beyond the "
            "model's top N of its reference are counted as 'other').",
            labels=["model", "class"],
        )
        conf = HistogramMetricFamily("cnn_prediction_confidence", "Top-1 probability of each answer.", labels=["model"])
        low = CounterMetricFamily(
            "cnn_low_confidence_predictions",
            "Answers whose top-1 probability is under the server's low_confidence_threshold.",
            labels=["model"],
        )
        ref_share = GaugeMetricFamily(
            "cnn_reference_class_share",
            "Share of each top-1 class on the test split (export), same classes as cnn_predictions_total.",
            labels=["model", "class"],
        )
        ref_conf = GaugeMetricFamily(
            "cnn_reference_confidence",
            "Quantiles of the top-1 probability on the test split (export).",
            labels=["model", "quantile"],
        )
        ref_low = GaugeMetricFamily(
            "cnn_reference_low_confidence_share",
            "Share of test-split answers under the server's low_confidence_threshold (export).",
            labels=["model"],
        )
        for model, m in list(self.models.items()):
            m.flush()
            counts, buckets = list(m.counts), list(m.buckets)
            for name, n in zip(m.slots, counts):
                preds.add_metric([model, name], n)
            cum = np.cumsum(buckets).tolist()  # Prometheus buckets are cumulative
            bounds = [str(b) for b in CONFIDENCE_BUCKETS] + ["+Inf"]
            conf.add_metric([model], list(zip(bounds, cum)), m.conf_sum)
            low.add_metric([model], m.low)
            ref = m.reference
            if ref is None:
                continue
            if ref["share"] is not None:
                for name, s in zip(m.slots, ref["share"].tolist()):
                    ref_share.add_metric([model, name], s)
            for q, v in ref["quantiles"].items():
                if math.isfinite(v):
                    ref_conf.add_metric([model, q], v)
            if ref["low"] is not None:
                ref_low.add_metric([model], ref["low"])
        return [preds, conf, low, ref_share, ref_conf, ref_low]

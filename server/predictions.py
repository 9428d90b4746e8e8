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
response; the counts live in plain lists updated on the event loop (one argmax and a few list increments for a
one-row answer; one argmax and two bincounts for a batch), and the collector reads them only when scraped.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

OTHER = "other"
# Top-1 probabilities: dense near 1 where a healthy classifier answers, coarse below.
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
_BOUNDS = np.array(CONFIDENCE_BUCKETS)  # searchsorted(side="left"): index of the first bucket with c <= bound
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
        "_slot_list",
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
        self._slot_list = slot_of.tolist()  # one-row answers index Python lists: ~10x cheaper than numpy scalars
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
        """Top-1 class and probability of every row of `probs` (rows, classes), probabilities."""
        if probs.ndim != 2 or probs.shape[1] != self.num_classes:
            return
        if probs.shape[0] == 1:  # the common request: plain indexing beats vectorising one row
            row = probs[0]
            j = int(row.argmax())
            self._add_one(j, float(row[j]))
            return
        top = probs.argmax(axis=1)
        self._add(top, probs[np.arange(len(top)), top].astype(np.float64))

    def record_logits(self, logits: np.ndarray) -> None:
        """As `record`, from logits: the top-1 probability of a softmax is 1 / sum(exp(logits - max))."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            return
        top = logits.argmax(axis=1)
        z = logits.astype(np.float64) - logits[np.arange(len(top)), top][:, None]
        conf = 1.0 / np.exp(z).sum(axis=1)
        if len(top) == 1:
            self._add_one(int(top[0]), float(conf[0]))
        else:
            self._add(top, conf)

    def _add_one(self, j: int, c: float) -> None:
        if c != c:  # NaN inputs give NaN answers: not a prediction
            return
        self.counts[self._slot_list[j]] += 1
        self.buckets[bisect.bisect_left(CONFIDENCE_BUCKETS, c)] += 1
        self.conf_sum += c
        if c < self.threshold:
            self.low += 1

    def _add(self, top: np.ndarray, conf: np.ndarray) -> None:
        total = float(conf.sum())
        if total != total:  # NaN rows (non-finite inputs) are not predictions
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

    def record_outputs(self, outputs: dict[str, np.ndarray]) -> None:
        """A ModelInfer answer (every output of the model): counted only from a classifier's output."""
        if self.output is None:
            return
        arr = outputs.get(self.output)
        if arr is None:
            return
        if arr.ndim != 2:
            arr = arr.reshape(len(arr), -1)
        if self.output == PROBABILITIES:
            self.record(arr)
        else:
            self.record_logits(arr)


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

"""Per-version statistics (Triton's ModelStatistics semantics) and the batcher observer that feeds them.

Every inference RPC (ModelInfer, ModelStreamInfer, Classify) goes through `InferenceService`, which
records one success or failure per request with `VersionStats.request_done`; the batcher reports queue
and compute times per batch through `BatchStatsObserver`, which also feeds the Prometheus histograms.
`snapshot()` gives a consistent copy as core types (server/core/types.py) for any protocol to encode.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from server.core.batcher import BatchReport
from server.core.types import BatchStatistics, Duration, VersionStatistics
from server.metrics import Metrics


@dataclass
class _Acc:
    """A running count and total of durations."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, n: int = 1) -> None:
        self.count += n
        self.ns += int(seconds * 1e9) * n

    def frozen(self) -> Duration:
        return Duration(self.count, self.ns)


@dataclass
class VersionStats:
    """What ModelStatistics reports for one version: per request (success, fail, queue, compute) and per
    batch size. Kept on the version's registry record, so a config reload keeps counting."""

    success: _Acc = field(default_factory=_Acc)
    fail: _Acc = field(default_factory=_Acc)
    queue: _Acc = field(default_factory=_Acc)
    compute_input: _Acc = field(default_factory=_Acc)
    compute_infer: _Acc = field(default_factory=_Acc)
    compute_output: _Acc = field(default_factory=_Acc)
    batches: dict[int, tuple[_Acc, _Acc, _Acc]] = field(default_factory=dict)
    inference_count: int = 0  # rows
    execution_count: int = 0  # batches
    last_inference_ms: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def request_done(self, seconds: float, ok: bool) -> None:
        """One request (of any RPC) ended after `seconds` in the core: a success or a failure."""
        with self.lock:
            (self.success if ok else self.fail).add(seconds)

    def snapshot(self, name: str, version: str) -> VersionStatistics:
        with self.lock:
            return VersionStatistics(
                name,
                version,
                self.last_inference_ms,
                self.inference_count,
                self.execution_count,
                self.success.frozen(),
                self.fail.frozen(),
                self.queue.frozen(),
                self.compute_input.frozen(),
                self.compute_infer.frozen(),
                self.compute_output.frozen(),
                [
                    BatchStatistics(bs, ci.frozen(), cf.frozen(), co.frozen())
                    for bs, (ci, cf, co) in sorted(self.batches.items())
                ],
            )


class BatchStatsObserver:
    """Batcher -> Prometheus metrics and the version's statistics."""

    def __init__(self, name: str, version: int, stats: VersionStats, metrics: Metrics) -> None:
        self.name, self.version, self.stats, self.metrics = name, str(version), stats, metrics
        self._queue_wait = metrics.queue_wait.labels(name)
        self.rows = 0  # rows waiting in this batcher's queue: summed per model into cnn_queue_depth_rows
        metrics.track_queue(name, self)
        self._batch = metrics.batch_size.labels(name)
        self._compute = metrics.compute_duration.labels(name, self.version)

    def on_queue_depth(self, rows: int) -> None:
        self.rows = rows

    def on_reject(self, reason: str) -> None:
        self.metrics.rejected.labels(self.name, reason).inc()

    def on_batch(self, r: BatchReport) -> None:
        s = self.stats
        with s.lock:
            for w in r.queue_waits_s:
                s.queue.add(w)
            s.compute_input.add(r.compute_input_s, r.requests)
            s.compute_infer.add(r.compute_infer_s, r.requests)
            s.compute_output.add(r.compute_output_s, r.requests)
            if r.ok:
                s.execution_count += 1
                s.inference_count += r.rows
                s.last_inference_ms = int(time.time() * 1000)
                b = s.batches.setdefault(r.rows, (_Acc(), _Acc(), _Acc()))
                b[0].add(r.compute_input_s)
                b[1].add(r.compute_infer_s)
                b[2].add(r.compute_output_s)
        for w in r.queue_waits_s:
            self._queue_wait.observe(w)
        self._batch.observe(r.rows)
        self._compute.observe(r.compute_infer_s)

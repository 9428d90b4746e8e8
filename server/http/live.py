"""A cheap live summary of the server's own counters for the page: requests/s, latency quantiles, in flight.

Read from the same Prometheus metrics every adapter records (`cnn_requests_total`,
`cnn_request_duration_seconds`, the in-flight counts), all protocols and RPCs together except the
health probes and this summary itself. Each call takes one sample (at most every 0.5 s) and compares it
with the oldest sample still inside the window (10 s): no background task, nothing when nobody looks.
"""

from __future__ import annotations

import bisect
import time
from collections import deque

WINDOW_S = 10.0
MIN_SAMPLE_INTERVAL_S = 0.5
_NOT_COUNTED = ("ServerLive", "ServerReady", "ModelReady")


class LiveStats:
    def __init__(self, metrics) -> None:
        self.metrics = metrics
        self.samples: deque[tuple[float, float, list[float]]] = deque()  # (t, requests, cumulative bucket counts)
        self.bounds: list[float] = []

    def _sample(self) -> tuple[float, list[float]]:
        total = 0.0
        for family in self.metrics.requests.collect():
            for s in family.samples:
                if s.name.endswith("_total") and s.labels.get("rpc") not in _NOT_COUNTED:
                    total += s.value
        buckets: dict[float, float] = {}
        for family in self.metrics.request_duration.collect():
            for s in family.samples:
                if s.name.endswith("_bucket") and s.labels.get("rpc") not in _NOT_COUNTED:
                    le = float(s.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + s.value
        self.bounds = sorted(buckets)
        return total, [buckets[b] for b in self.bounds]

    def summary(self) -> dict:
        now = time.monotonic()
        if not self.samples or now - self.samples[-1][0] >= MIN_SAMPLE_INTERVAL_S:
            total, counts = self._sample()
            self.samples.append((now, total, counts))
        while len(self.samples) > 2 and now - self.samples[1][0] >= WINDOW_S:
            self.samples.popleft()
        t0, n0, c0 = self.samples[0]
        t1, n1, c1 = self.samples[-1]
        span = t1 - t0
        delta = [b - a for a, b in zip(c0, c1)] if len(c0) == len(c1) else c1
        in_flight = sum(v for k, v in self.metrics.in_flight_counts.items() if k not in _NOT_COUNTED)
        return {
            "window_s": round(span, 3),
            "requests_per_s": (n1 - n0) / span if span > 0 else 0.0,
            "requests_total": int(n1),
            "in_flight": in_flight,
            "latency_ms": {
                "p50": self._quantile(delta, 0.5),
                "p90": self._quantile(delta, 0.9),
                "p99": self._quantile(delta, 0.99),
            },
        }

    def _quantile(self, cumulative: list[float], q: float) -> float | None:
        """Prometheus' histogram_quantile: linear inside the bucket that holds the q-th observation, in ms."""
        if not cumulative or cumulative[-1] <= 0:
            return None
        rank = q * cumulative[-1]
        i = bisect.bisect_left(cumulative, rank)
        i = min(i, len(cumulative) - 1)
        hi = self.bounds[i]
        lo = self.bounds[i - 1] if i > 0 else 0.0
        if hi == float("inf"):
            return lo * 1e3
        below = cumulative[i - 1] if i > 0 else 0.0
        inside = cumulative[i] - below
        frac = (rank - below) / inside if inside > 0 else 1.0
        return (lo + (hi - lo) * frac) * 1e3

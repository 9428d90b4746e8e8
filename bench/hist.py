"""Latency histograms: HdrHistogram (the `hdrhistogram` package) in microseconds, read out in milliseconds.

An HDR histogram keeps every value to 3 significant digits from 1 µs to 10 minutes in a few tens of KiB,
so a run of millions of requests keeps its full distribution (p99.9, p99.99, max) without storing each
value, and histograms from several load-generator processes add up exactly (`merge`). Values are
recorded as whole microseconds, rounded up (a 0.2 µs latency counts as 1 µs, never 0); anything
above the top of the range is clamped to it and counted in `clamped`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 600_000_000  # 10 minutes
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


class LatencyHistogram:
    """Latencies in seconds in, percentiles in milliseconds out."""

    def __init__(self) -> None:
        self._h = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        self.clamped = 0

    def record(self, seconds: float) -> None:
        if not seconds >= 0:  # NaN or negative: a caller bug, not a latency
            raise ValueError(f"latency must be a finite number >= 0 s, got {seconds!r}")
        us = max(LOWEST_US, math.ceil(seconds * 1e6))
        if us > HIGHEST_US:
            us = HIGHEST_US
            self.clamped += 1
        self._h.record_value(us)

    def record_many(self, values: Iterable[float]) -> None:
        for v in values:
            self.record(float(v))

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        self._h.add(other._h)
        self.clamped += other.clamped
        return self

    @property
    def count(self) -> int:
        return self._h.get_total_count()

    def percentile_ms(self, q: float) -> float:
        """The value at percentile `q` (0..100), in ms; NaN when empty."""
        if not self.count:
            return float("nan")
        return self._h.get_value_at_percentile(q) / 1e3

    def max_ms(self) -> float:
        return self._h.get_max_value() / 1e3 if self.count else float("nan")

    def min_ms(self) -> float:
        return self._h.get_min_value() / 1e3 if self.count else float("nan")

    def mean_ms(self) -> float:
        return self._h.get_mean_value() / 1e3 if self.count else float("nan")

    def summary(self, prefix: str = "") -> dict:
        """{prefix}p50_ms, p90_ms, p99_ms, p99.9_ms, max_ms, mean_ms, count."""
        out = {f"{prefix}{_pname(q)}_ms": _r(self.percentile_ms(q)) for q in PERCENTILES}
        out.update(
            {f"{prefix}max_ms": _r(self.max_ms()), f"{prefix}mean_ms": _r(self.mean_ms()), f"{prefix}count": self.count}
        )
        return out

    def encode(self) -> str:
        """Compressed, base64 text (HdrHistogram's own format: readable by its other implementations)."""
        return self._h.encode().decode("ascii")

    @classmethod
    def decode(cls, text: str) -> LatencyHistogram:
        h = cls()
        if text:
            h._h = HdrHistogram.decode(text.encode("ascii"))
        return h


def _pname(q: float) -> str:
    return f"p{q:g}"


def _r(v: float) -> float | None:
    return None if v != v else round(v, 4)

"""The open-loop generator (bench/openloop.py) and its histograms (bench/hist.py).

The central test: against a gRPC server whose event loop stalls once for 200 ms, every request that was
*scheduled* during the stall is charged the stall (its latency runs from its scheduled time, not from when
a blocked client got round to sending it), and the generator kept sending during the stall. A closed-loop
client would show the stall as one slow request per connection.

The servers here are tiny grpc.aio servers with a generic bytes-in/bytes-out handler, in a thread of the
pytest process (no `inference` stubs are imported); the generator runs in its own spawned processes.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time

import grpc
import numpy as np
import pytest

from bench.hist import HIGHEST_US, LatencyHistogram
from bench.openloop import DROPPED, LOST, arrival_times, run_open_loop

METHOD = "/inference.GRPCInferenceService/ModelInfer"


class StallServer:
    """grpc.aio server on 127.0.0.1: answers b"ok"; the `stall_at`-th request blocks the event loop for
    `stall_s` (like a long GC pause or a blocking call), once; payload b"fail" gets RESOURCE_EXHAUSTED,
    payload b"hang" is never answered."""

    def __init__(self, stall_at: int | None = None, stall_s: float = 0.2) -> None:
        self.stall_at, self.stall_s = stall_at, stall_s
        self.count = 0
        self.stall_start = self.stall_end = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "test server did not start"

    async def _handle(self, request: bytes, context) -> bytes:
        self.count += 1
        if request == b"fail":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "told to fail")
        if request == b"hang":
            await asyncio.sleep(3600)
        if self.count == self.stall_at:
            self.stall_start = time.monotonic()
            time.sleep(self.stall_s)  # blocks the loop: nothing is answered meanwhile
            self.stall_end = time.monotonic()
        return b"ok"

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(self._handle)}
        )
        server.add_generic_rpc_handlers((handler,))
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await self._stop.wait()
        await server.stop(0)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def stall_server():
    s = StallServer(stall_at=100, stall_s=0.2)
    yield s
    s.close()


def _assert_stall_charged(server, r, rate: float) -> None:
    """Every request scheduled inside the server's stall is charged the rest of it; the generator kept sending."""
    assert server.stall_end is not None, "the server never stalled"
    assert r.failed == 0 and r.ok == r.scheduled == len(r.sched), r.outcomes()
    start, end = server.stall_start - r.t0, server.stall_end - r.t0  # seconds on the schedule's clock
    during = (r.sched >= start) & (r.sched < end)
    assert during.sum() >= 0.15 * rate, "the schedule put ~100 requests inside the 200 ms stall"
    # none of them can have been answered before the stall ended: each latency covers the rest of the stall
    owed = end - r.sched[during]
    assert np.all(r.latency[during] >= owed), (r.latency[during] - owed).min()
    # the generator did not wait for the stalled server: it kept sending on schedule during the stall
    sent_at = r.sched + r.lag
    assert ((sent_at > start) & (sent_at < end)).sum() >= 1
    # and the histogram holds the stall: its maximum is at least the stall minus one arrival gap
    h = r.histogram()
    assert h.count == r.ok
    assert h.max_ms() >= (end - start - 1 / rate) * 1e3
    s = r.summary()
    assert s["p99.9_ms"] >= s["p99_ms"] >= s["p50_ms"] > 0 and s["send_lag_count"] == r.scheduled


def test_requests_scheduled_during_a_stall_are_charged_the_stall(stall_server):
    rate = 500.0
    r = run_open_loop(stall_server.address, b"x", rate, duration_s=2.0, warmup_s=0.0, arrival="constant", channels=2)
    _assert_stall_charged(stall_server, r, rate)


class HttpStallServer:
    """The same over HTTP (aiohttp on 127.0.0.1): POST /infer answers b"ok" with 200; the `stall_at`-th request
    blocks the loop for `stall_s`, once; body b"fail" gets 429, b"hang" is never answered."""

    def __init__(self, stall_at: int | None = None, stall_s: float = 0.2) -> None:
        self.stall_at, self.stall_s = stall_at, stall_s
        self.count = 0
        self.stall_start = self.stall_end = None
        self.seen_headers: dict[str, str] = {}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "test server did not start"

    async def _handle(self, request):
        from aiohttp import web

        body = await request.read()
        self.count += 1
        self.seen_headers = dict(request.headers)
        if body == b"fail":
            return web.Response(status=429, text="told to fail")
        if body == b"hang":
            await asyncio.sleep(3600)
        if self.count == self.stall_at:
            self.stall_start = time.monotonic()
            time.sleep(self.stall_s)  # blocks the loop
            self.stall_end = time.monotonic()
        return web.Response(body=b"ok")

    async def _main(self) -> None:
        from aiohttp import web

        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/infer", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}/infer"

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def test_http_requests_scheduled_during_a_stall_are_charged_the_stall():
    server = HttpStallServer(stall_at=100, stall_s=0.2)
    try:
        rate = 500.0
        r = run_open_loop(
            server.address,
            b"x",
            rate,
            duration_s=2.0,
            warmup_s=0.0,
            arrival="constant",
            headers={"Inference-Header-Content-Length": "1"},
        )
        assert server.seen_headers.get("Inference-Header-Content-Length") == "1"
        _assert_stall_charged(server, r, rate)
    finally:
        server.close()


@pytest.mark.parametrize(
    "make,refused", [(StallServer, "RESOURCE_EXHAUSTED"), (HttpStallServer, "HTTP_429")], ids=["grpc", "http"]
)
def test_errors_lost_and_dropped_requests_are_counted_not_timed(make, refused):
    server = make()
    try:
        r = run_open_loop(server.address, b"fail", 200.0, duration_s=0.5, warmup_s=0.0, arrival="constant")
        assert r.ok == 0 and r.outcomes() == {refused: r.scheduled} and r.failed == r.scheduled == 100
        assert r.histogram().count == 0 and r.error_samples and "told to fail" in r.error_samples[0]
        r = run_open_loop(
            server.address,
            b"hang",
            200.0,
            duration_s=0.25,
            warmup_s=0.0,
            arrival="constant",
            max_in_flight=20,
            drain_s=0.3,
            timeout_s=60,
            preflight=False,
        )
        assert (r.code == LOST).sum() == 20 and (r.code == DROPPED).sum() == r.scheduled - 20
        assert r.outcomes() == {"LOST": 20, "DROPPED_BY_GENERATOR": r.scheduled - 20}
    finally:
        server.close()


def test_warmup_is_not_counted():
    server = StallServer()
    try:
        r = run_open_loop(server.address, b"x", 100.0, duration_s=0.5, warmup_s=0.3, arrival="constant")
        assert len(r.sched) == 80 and r.scheduled == 50 and r.ok == 50 and r.histogram().count == 50
    finally:
        server.close()


def test_arrival_schedules():
    c = arrival_times(1000.0, 2.0, "constant")
    assert len(c) == 2000 and np.allclose(np.diff(c), 1e-3) and c[0] == 0
    p = arrival_times(1000.0, 20.0, "poisson", seed=1)
    assert np.all(np.diff(p) > 0) and p[-1] < 20.0
    assert abs(len(p) / 20.0 - 1000) < 1000 * 0.03  # ~20,000 arrivals: sd 0.7 %
    gaps = np.diff(p)
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05, "exponential gaps: coefficient of variation 1"
    assert np.array_equal(p, arrival_times(1000.0, 20.0, "poisson", seed=1))
    assert not np.array_equal(p[:100], arrival_times(1000.0, 20.0, "poisson", seed=2)[:100])
    with pytest.raises(ValueError, match="arrival must be one of"):
        arrival_times(10, 1, "bursty")
    with pytest.raises(ValueError, match="rate and duration"):
        arrival_times(0, 1)


def test_histogram_percentiles_merge_and_encoding():
    rng = np.random.default_rng(0)
    values = rng.lognormal(mean=-6.0, sigma=1.0, size=20_000)  # ~2.5 ms median, long tail, seconds
    a, b = LatencyHistogram(), LatencyHistogram()
    a.record_many(values[:10_000])
    b.record_many(values[10_000:])
    whole = LatencyHistogram().merge(a).merge(b)
    assert whole.count == 20_000
    for q in (50, 90, 99, 99.9):
        exact = np.percentile(values, q) * 1e3
        assert math.isclose(whole.percentile_ms(q), exact, rel_tol=2e-3, abs_tol=2e-3), q  # 3 significant digits
    assert math.isclose(whole.max_ms(), values.max() * 1e3, rel_tol=1e-3)
    back = LatencyHistogram.decode(whole.encode())
    assert back.count == whole.count and back.percentile_ms(99.9) == whole.percentile_ms(99.9)
    h = LatencyHistogram()
    h.record(0.0)
    h.record(1e9)
    assert h.count == 2 and h.clamped == 1 and h.max_ms() >= HIGHEST_US / 1e3 * 0.999
    with pytest.raises(ValueError, match="latency must be"):
        h.record(float("nan"))
    empty = LatencyHistogram()
    assert math.isnan(empty.percentile_ms(50)) and empty.summary()["p99_ms"] is None

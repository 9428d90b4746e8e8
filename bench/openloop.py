"""Open-loop load generator (gRPC, or HTTP): requests leave at a set arrival rate, whatever the server does.

A closed-loop client (bench/loadgen.py) sends its next request only when the previous one has been
answered, so a server that stalls for 200 ms also stops the clock for the requests that would have
arrived meanwhile: they are sent late, timed from when they were sent, and the stall shows up as one
slow request instead of hundreds ("coordinated omission"). Here every request has a *scheduled* send
time fixed before the run starts (Poisson arrivals, or constant spacing), it is sent at that time
whether or not earlier requests have been answered, and its latency runs from the scheduled time to
the answer. A generator that falls behind its own schedule therefore adds its lateness to the
latencies (never hides it), and that lateness is measured separately as *send lag* (actual send time
minus scheduled time) so a reader can tell a slow server from a slow generator.

Mechanics: the schedule is drawn in the parent (seeded) and dealt round-robin to one or more client
processes (spawned, never forked; separate from the server's process, so the server cannot slow the
generator through a shared GIL or event loop). Each runs grpc.aio with `channels` connections and one
task per request, any number in flight (up to `max_in_flight`, beyond which a request is counted as
dropped by the generator, never delayed), with pre-serialised requests and unparsed answers (bytes in,
bytes out). All processes share CLOCK_MONOTONIC. The first `warmup_s` of the schedule is not counted;
of the requests scheduled in the measurement window, each has exactly one outcome: answered OK (its
latency goes into an HDR histogram, bench/hist.py), failed with a gRPC status, lost (still unanswered
`drain_s` after the schedule ended) or dropped by the generator. Per-request records (scheduled time,
latency, status) come back too, for time series (bench/reload.py).

HTTP: an address `http://HOST:PORT/PATH` sends `payload` as a POST body to that URL with `headers` (for
the binary tensor extension: `bench.http_bare.lenet_request()`), over aiohttp with up to `http_connections`
keep-alive connections (HTTP/1.1 answers one request per connection at a time: a request finding every
connection busy waits for one, and that wait counts in its latency from the scheduled time). Outcome codes:
0 for 200, else the HTTP status (>= 100, apart from gRPC's 0..16).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field

import numpy as np

from bench.hist import LatencyHistogram
from bench.loadgen import CHANNEL_OPTIONS, MODEL_INFER, pin_from_env

ARRIVALS = ("poisson", "constant")
LOST = -1  # scheduled and sent, never answered before the drain ended
OTHER = -2  # a non-gRPC exception in the client
DROPPED = -3  # not sent: the generator's in-flight cap was reached
NOT_SENT = -4  # the generator never got to it (it stopped early)
_SPECIAL = {LOST: "LOST", OTHER: "CLIENT_ERROR", DROPPED: "DROPPED_BY_GENERATOR", NOT_SENT: "NOT_SENT"}


def arrival_times(rate: float, duration_s: float, arrival: str = "poisson", seed: int = 0) -> np.ndarray:
    """Scheduled send times in seconds from the start, all < duration_s, at `rate` requests/s on average.

    poisson: exponential gaps (a memoryless stream of independent users); constant: exactly 1/rate apart."""
    if not rate > 0 or not duration_s > 0:
        raise ValueError(f"rate and duration must be > 0, got rate={rate!r}, duration_s={duration_s!r}")
    if arrival == "constant":
        return np.arange(int(np.ceil(rate * duration_s))) / rate
    if arrival != "poisson":
        raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}, got {arrival!r}")
    rng = np.random.default_rng(seed)
    n = int(rate * duration_s + 10 * np.sqrt(rate * duration_s) + 10)
    t = np.cumsum(rng.exponential(1.0 / rate, n))
    while t[-1] < duration_s:  # the margin above almost never runs out; if it does, draw more
        t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(1.0 / rate, n))])
    return t[t < duration_s]


def status_name(code: int) -> str:
    if code in _SPECIAL:
        return _SPECIAL[code]
    if code >= 100:
        return f"HTTP_{code}"
    import grpc

    for sc in grpc.StatusCode:
        if sc.value[0] == code:
            return sc.name
    return f"STATUS_{code}"


@dataclass
class OpenLoopResult:
    rate: float  # offered requests/s
    arrival: str
    duration_s: float  # measurement window (by scheduled time)
    warmup_s: float
    processes: int
    t0: float  # CLOCK_MONOTONIC of schedule time 0
    sched: np.ndarray = field(repr=False)  # scheduled time, s from t0, every request of the run
    latency: np.ndarray = field(repr=False)  # s from scheduled time to the answer; NaN if none
    code: np.ndarray = field(repr=False)  # gRPC status code (0 = OK) or LOST / OTHER / DROPPED / NOT_SENT
    lag: np.ndarray = field(repr=False)  # s from scheduled to actual send; NaN if not sent
    client_cpu_s: float = 0.0
    error_samples: list[str] = field(default_factory=list)
    host_steal_s: float | None = None  # CPU time the hypervisor gave to others during the run, all CPUs (None: unknown)

    def window_mask(self, start_s: float | None = None, end_s: float | None = None) -> np.ndarray:
        """Requests scheduled in [start_s, end_s) (seconds from t0; default the measurement window)."""
        a = self.warmup_s if start_s is None else start_s
        b = self.warmup_s + self.duration_s if end_s is None else end_s
        return (self.sched >= a) & (self.sched < b)

    def histogram(self, mask: np.ndarray | None = None) -> LatencyHistogram:
        """Latencies of the OK answers among `mask` (default the measurement window)."""
        m = self.window_mask() if mask is None else mask
        h = LatencyHistogram()
        h.record_many(self.latency[m & (self.code == 0)])
        return h

    def lag_histogram(self, mask: np.ndarray | None = None) -> LatencyHistogram:
        m = self.window_mask() if mask is None else mask
        h = LatencyHistogram()
        h.record_many(np.clip(self.lag[m & ~np.isnan(self.lag)], 0.0, None))
        return h

    def outcomes(self, mask: np.ndarray | None = None) -> dict[str, int]:
        m = self.window_mask() if mask is None else mask
        codes, counts = np.unique(self.code[m], return_counts=True)
        return {("OK" if c == 0 else status_name(int(c))): int(n) for c, n in zip(codes, counts)}

    @property
    def scheduled(self) -> int:
        return int(self.window_mask().sum())

    @property
    def ok(self) -> int:
        return int((self.window_mask() & (self.code == 0)).sum())

    @property
    def failed(self) -> int:
        """Scheduled in the window and not answered OK: errors, lost, dropped."""
        return self.scheduled - self.ok

    @property
    def completed_rps(self) -> float:
        """OK answers that *arrived* inside the window, per second: what the server kept up with."""
        done = self.sched + self.latency
        a, b = self.warmup_s, self.warmup_s + self.duration_s
        return float(((self.code == 0) & (done >= a) & (done < b)).sum()) / self.duration_s

    def summary(self) -> dict:
        h, lag = self.histogram(), self.lag_histogram()
        out = {
            "offered_rps": round(self.rate, 2),
            "arrival": self.arrival,
            "duration_s": self.duration_s,
            "processes": self.processes,
            "scheduled": self.scheduled,
            "ok": self.ok,
            "failed": self.failed,
            "outcomes": self.outcomes(),
            "completed_rps": round(self.completed_rps, 2),
            **h.summary(),
            **lag.summary("send_lag_"),
            "client_cpu_s": round(self.client_cpu_s, 3),
            "host_steal_s": None if self.host_steal_s is None else round(self.host_steal_s, 3),
            "histogram": h.encode(),
        }
        if self.error_samples:
            out["error_samples"] = self.error_samples[:3]
        return out


def host_steal_s() -> float | None:
    """Steal time so far, all CPUs (Linux /proc/stat, the 8th field): time a virtual machine's CPUs were ready
    to run and the hypervisor ran something else. None where there is no such field."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# one client process


class _HttpStatus(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.status = status


def _http_caller(session, url: str, payload: bytes, headers: dict[str, str]):
    """An awaitable call(payload, timeout=...) for HTTP, as grpc's unary_unary gives for gRPC."""
    import aiohttp

    async def call(body: bytes, timeout: float | None = None) -> bytes:
        async with session.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            data = await r.read()
            if r.status != 200:
                raise _HttpStatus(r.status, data.decode(errors="replace"))
            return data

    return call


async def _client_main(
    address: str,
    payload: bytes,
    sched: np.ndarray,
    channels: int,
    conn,
    timeout_s: float,
    max_in_flight: int,
    drain_s: float,
    preflight: bool,
    headers: dict[str, str] | None = None,
    http_connections: int = 256,
) -> None:
    import grpc

    http = address.startswith("http://")
    chans: list = []
    session = None
    if http:
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=http_connections))
        calls = [_http_caller(session, address, payload, headers or {})]
        channels = 1
    else:
        chans = [
            grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS + [("bench.channel", i)])
            for i in range(channels)
        ]
        calls = [c.unary_unary(MODEL_INFER) for c in chans]  # bytes in, bytes out
    try:
        for c in chans:
            await asyncio.wait_for(c.channel_ready(), 30)
        for call in calls if preflight else ():  # one answer per channel before the clock starts (warms the path)
            try:
                await call(payload, timeout=60)
            except grpc.aio.AioRpcError as e:  # any status the server chose proves the path; no answer does not
                if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
            except _HttpStatus as e:
                if e.status in (503, 504):
                    raise
        conn.send(("ready", os.getpid()))
        t0 = conn.recv()
        n = len(sched)
        due = t0 + sched  # absolute CLOCK_MONOTONIC
        latency = np.full(n, np.nan)
        lag = np.full(n, np.nan)
        code = np.full(n, NOT_SENT, dtype=np.int16)
        errors: list[str] = []
        now = time.monotonic
        in_flight = 0
        tasks: set[asyncio.Task] = set()

        async def one(i: int, call, t_due: float) -> None:
            nonlocal in_flight
            try:
                await call(payload, timeout=timeout_s)
                c = 0
            except grpc.aio.AioRpcError as e:
                c = e.code().value[0]
                if len(errors) < 5:
                    errors.append(f"{e.code().name}: {e.details()}")
            except _HttpStatus as e:
                c = e.status
                if len(errors) < 5:
                    errors.append(str(e))
            except TimeoutError:  # the HTTP client's own timeout: as gRPC's DEADLINE_EXCEEDED
                c = 4
                if len(errors) < 5:
                    errors.append(f"no HTTP answer within {timeout_s} s")
            except asyncio.CancelledError:
                in_flight -= 1
                return  # stays LOST
            except Exception as e:  # noqa: BLE001 - counted and sampled
                c = OTHER
                if len(errors) < 5:
                    errors.append(f"{type(e).__name__}: {e}")
            latency[i] = now() - t_due
            code[i] = c
            in_flight -= 1

        cpu0 = os.times()
        i = 0
        while i < n:
            t = now()
            if due[i] > t:
                await asyncio.sleep(due[i] - t)
                continue
            while i < n and due[i] <= t:  # everything due by now leaves now, in schedule order
                if in_flight >= max_in_flight:
                    code[i] = DROPPED
                else:
                    lag[i] = now() - due[i]
                    code[i] = LOST  # until answered
                    task = asyncio.get_running_loop().create_task(one(i, calls[i % channels], due[i]))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    in_flight += 1
                i += 1
            await asyncio.sleep(0)  # let the new calls start before looking at the clock again
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=drain_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        cpu1 = os.times()
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        conn.send(("done", latency.tobytes(), code.tobytes(), lag.tobytes(), cpu, errors))
    except Exception as e:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        for c in chans:
            await c.close()
        if session is not None:
            await session.close()


def _client_process(
    address: str,
    payload: bytes,
    sched_bytes: bytes,
    channels: int,
    conn,
    timeout_s: float,
    max_in_flight: int,
    drain_s: float,
    preflight: bool,
    headers: dict[str, str] | None = None,
    http_connections: int = 256,
) -> None:
    pin_from_env("BENCH_CLIENT_CPUS")
    sched = np.frombuffer(sched_bytes, dtype=np.float64)
    asyncio.run(
        _client_main(
            address,
            payload,
            sched,
            channels,
            conn,
            timeout_s,
            max_in_flight,
            drain_s,
            preflight,
            headers,
            http_connections,
        )
    )


# --------------------------------------------------------------------------------------------------
# the parent


class OpenLoopRun:
    """One open-loop run: `start()` returns once the schedule's clock is running (the caller may act on the
    server meanwhile, e.g. publish a version at `t0 + x`), `wait()` collects the result."""

    def __init__(
        self,
        address: str,
        payload: bytes,
        rate: float,
        *,
        duration_s: float = 5.0,
        warmup_s: float = 1.0,
        arrival: str = "poisson",
        seed: int = 0,
        processes: int = 1,
        channels: int = 2,
        timeout_s: float = 30.0,
        max_in_flight: int = 20_000,
        drain_s: float = 30.0,
        preflight: bool = True,
        headers: dict[str, str] | None = None,
        http_connections: int = 256,
    ) -> None:
        self.address, self.payload, self.rate, self.arrival = address, payload, rate, arrival
        self.headers, self.http_connections = dict(headers or {}), http_connections
        self.duration_s, self.warmup_s, self.drain_s = duration_s, warmup_s, drain_s
        self.sched = arrival_times(rate, warmup_s + duration_s, arrival, seed)
        self.processes = max(1, processes)
        self._args = (channels, timeout_s, max_in_flight, drain_s, preflight)
        self._pipes: list = []
        self._procs: list = []
        self.t0 = 0.0
        self._steal0: float | None = None

    def start(self, lead_s: float = 0.2) -> float:
        """Spawn the client processes, wait until each is connected, start the clock; returns t0."""
        ctx = mp.get_context("spawn")  # never fork a process that may hold gRPC state
        channels, timeout_s, max_in_flight, drain_s, preflight = self._args
        try:
            for k in range(self.processes):
                parent, child = ctx.Pipe()
                part = np.ascontiguousarray(self.sched[k :: self.processes])
                p = ctx.Process(
                    target=_client_process,
                    daemon=True,
                    args=(
                        self.address,
                        self.payload,
                        part.tobytes(),
                        channels,
                        child,
                        timeout_s,
                        max_in_flight,
                        drain_s,
                        preflight,
                        self.headers,
                        self.http_connections,
                    ),
                )
                p.start()
                self._pipes.append(parent)
                self._procs.append(p)
            for conn in self._pipes:
                if not conn.poll(120):
                    raise RuntimeError("an open-loop client process did not become ready in 120 s")
                msg = conn.recv()
                if msg[0] != "ready":
                    raise RuntimeError(f"open-loop client failed to connect to {self.address}: {msg[1]}")
            self.t0 = time.monotonic() + lead_s
            self._steal0 = host_steal_s()
            for conn in self._pipes:
                conn.send(self.t0)
        except BaseException:
            self._reap()
            raise
        return self.t0

    def wait(self) -> OpenLoopResult:
        n = len(self.sched)
        latency, code, lag = np.full(n, np.nan), np.full(n, NOT_SENT, dtype=np.int16), np.full(n, np.nan)
        cpu, samples = 0.0, []
        try:
            limit = self.warmup_s + self.duration_s + self.drain_s + 120
            for k, conn in enumerate(self._pipes):
                if not conn.poll(max(1.0, self.t0 + limit - time.monotonic())):
                    raise RuntimeError("an open-loop client process did not finish")
                msg = conn.recv()
                if msg[0] != "done":
                    raise RuntimeError(f"open-loop client failed: {msg[1]}")
                _, lat_b, code_b, lag_b, c, es = msg
                latency[k :: self.processes] = np.frombuffer(lat_b, dtype=np.float64)
                code[k :: self.processes] = np.frombuffer(code_b, dtype=np.int16)
                lag[k :: self.processes] = np.frombuffer(lag_b, dtype=np.float64)
                cpu += c
                samples += es
        finally:
            self._reap()
        steal0, steal1 = self._steal0, host_steal_s()
        return OpenLoopResult(
            self.rate,
            self.arrival,
            self.duration_s,
            self.warmup_s,
            self.processes,
            self.t0,
            self.sched,
            latency,
            code,
            lag,
            cpu,
            samples,
            None if steal0 is None or steal1 is None else steal1 - steal0,
        )

    def _reap(self) -> None:
        for p in self._procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        self._procs, self._pipes = [], []


def run_open_loop(address: str, payload: bytes, rate: float, **kwargs) -> OpenLoopResult:
    """Open loop at `rate` requests/s for warmup_s + duration_s (see OpenLoopRun for the options)."""
    run = OpenLoopRun(address, payload, rate, **kwargs)
    run.start()
    return run.wait()


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.openloop --address HOST:PORT --model NAME --rate R`: one run, summary as JSON."""
    import argparse
    import json

    from bench.loadgen import model_infer_request

    p = argparse.ArgumentParser(prog="python -m bench.openloop", description=__doc__.split("\n")[0])
    p.add_argument("--address", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--rate", type=float, required=True, help="offered requests/s")
    p.add_argument("--rows", type=int, default=1, help="images per request (1x28x28 FP32)")
    p.add_argument("--arrival", choices=ARRIVALS, default="poisson")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    r = run_open_loop(
        a.address,
        model_infer_request(a.model, a.rows),
        a.rate,
        duration_s=a.duration,
        warmup_s=a.warmup,
        arrival=a.arrival,
        processes=a.processes,
        seed=a.seed,
    )
    s = r.summary()
    s.pop("histogram")
    print(json.dumps(s, indent=2))
    return 0 if r.failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

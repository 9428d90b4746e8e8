"""Closed-loop gRPC load generator: asyncio clients in one or more processes, pre-serialised requests.

Each client process opens `channels` gRPC channels (separate TCP connections: a local subchannel pool,
so SO_REUSEPORT servers see several connections) and runs `concurrency` coroutines that each send one
request, wait for its answer and send the next. Requests are serialised once up front and answers are
not parsed (bytes in, bytes out): the client spends as little CPU per request as Python allows, so the
same client measures the server and the echo reference alike.

Timing: every process gets the same absolute window on CLOCK_MONOTONIC (shared by all processes on
Linux); only requests that *complete* inside [measure_start, measure_end] count, and their latency is
send -> answer. Processes start, connect and report ready before the window is handed out, so process
start-up is never inside it.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import time
from array import array
from dataclasses import dataclass, field

import numpy as np

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.use_local_subchannel_pool", 1),
]


@dataclass
class LoadResult:
    concurrency: int
    processes: int
    duration_s: float  # measurement window
    requests: int  # completed OK inside the window
    errors: int
    rows_per_request: int
    latencies_s: np.ndarray = field(repr=False)  # one per counted request
    client_cpu_s: float = 0.0  # all client processes, user + sys, warm-up included
    error_samples: list[str] = field(default_factory=list)
    total_ok: int = 0  # completed OK including warm-up (divides server CPU time)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def images_per_s(self) -> float:
        return self.rps * self.rows_per_request

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) if len(self.latencies_s) else float("nan")

    def summary(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "processes": self.processes,
            "duration_s": round(self.duration_s, 4),
            "requests": self.requests,
            "errors": self.errors,
            "rows_per_request": self.rows_per_request,
            "rps": round(self.rps, 2),
            "images_per_s": round(self.images_per_s, 2),
            "p50_ms": round(self.pct(50) * 1e3, 4),
            "p90_ms": round(self.pct(90) * 1e3, 4),
            "p99_ms": round(self.pct(99) * 1e3, 4),
            "mean_ms": round(float(np.mean(self.latencies_s)) * 1e3, 4) if len(self.latencies_s) else None,
            "client_cpu_s": round(self.client_cpu_s, 3),
            "error_samples": self.error_samples[:3],
        }


def model_infer_request(model: str, batch: int, shape=(1, 28, 28), seed: int = 0) -> bytes:
    """A serialised ModelInferRequest: one FP32 input 'input' of (batch, *shape), raw contents."""
    from protos.inference import grpc_service_pb2 as pb

    x = np.random.default_rng(seed).standard_normal((batch, *shape)).astype("<f4")
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="input", datatype="FP32", shape=[batch, *shape])
    req.raw_input_contents.append(x.tobytes())
    return req.SerializeToString()


def pin_from_env(var: str) -> None:
    """Pin this process (thread) to the CPUs listed in `var` ("2,3" or "2-5"), if set: `--client-cpus`."""
    spec = os.environ.get(var, "")
    if spec:
        os.sched_setaffinity(0, parse_cpus(spec))


def parse_cpus(spec: str) -> set[int]:
    cpus: set[int] = set()
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            cpus.update(range(int(a), int(b) + 1))
        elif part.strip():
            cpus.add(int(part))
    return cpus


# --------------------------------------------------------------------------------------------------
# one client process


async def _client_main(
    address: str, payload: bytes, concurrency: int, channels: int, conn, total_requests: int | None
) -> None:
    import grpc

    chans = [
        grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS + [("bench.channel", i)]) for i in range(channels)
    ]
    calls = [c.unary_unary(MODEL_INFER) for c in chans]  # no (de)serialisers: bytes in, bytes out
    try:
        for c in chans:
            await asyncio.wait_for(c.channel_ready(), 30)
        # one answer per channel proves the endpoint works before the clock starts
        for call in calls:
            await call(payload, timeout=60)
        conn.send(("ready", os.getpid()))
        t_start, t_measure, t_end = conn.recv()
        lat = array("d")
        counters = {"ok": 0, "errors": 0, "sent": 0, "all": 0}
        errors: list[str] = []
        now = time.monotonic
        await asyncio.sleep(max(0.0, t_start - now()))

        async def one(call) -> None:
            while True:
                if total_requests is not None:
                    if counters["sent"] >= total_requests:
                        return
                    counters["sent"] += 1
                elif now() >= t_end:
                    return
                t0 = now()
                try:
                    await call(payload, timeout=60)
                except Exception as e:  # noqa: BLE001 - counted and sampled
                    t1 = now()
                    if total_requests is not None or t_measure <= t1 <= t_end:
                        counters["errors"] += 1
                        if len(errors) < 5:
                            errors.append(f"{type(e).__name__}: {e.details() if hasattr(e, 'details') else e}")
                    continue
                t1 = now()
                counters["all"] += 1
                if total_requests is not None or t_measure <= t1 <= t_end:
                    lat.append(t1 - t0)
                    counters["ok"] += 1

        t_first = now()
        cpu0 = os.times()
        await asyncio.gather(*(one(calls[i % channels]) for i in range(concurrency)))
        t_last = now()
        cpu1 = os.times()
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        conn.send(
            ("done", counters["ok"], counters["errors"], lat.tobytes(), cpu, errors, t_first, t_last, counters["all"])
        )
    except Exception as e:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        for c in chans:
            await c.close()


def _client_process(
    address: str, payload: bytes, concurrency: int, channels: int, conn, total_requests: int | None
) -> None:
    pin_from_env("BENCH_CLIENT_CPUS")
    asyncio.run(_client_main(address, payload, concurrency, channels, conn, total_requests))


# --------------------------------------------------------------------------------------------------
# the parent


def auto_processes(concurrency: int) -> int:
    """Client processes: one per 64 concurrent requests, at most half the cores (the server needs the rest)."""
    cores = os.cpu_count() or 1
    return max(1, min(math.ceil(concurrency / 64), cores // 2 or 1))


def run_load(
    address: str,
    payload: bytes,
    concurrency: int,
    *,
    duration_s: float = 5.0,
    warmup_s: float = 1.0,
    processes: int | None = None,
    channels_per_process: int = 1,
    rows_per_request: int = 1,
    total_requests: int | None = None,
) -> LoadResult:
    """Closed loop at `concurrency` for `warmup_s` + `duration_s` (or exactly `total_requests`)."""
    processes = processes or auto_processes(concurrency)
    processes = max(1, min(processes, concurrency))
    ctx = mp.get_context("spawn")  # never fork a process that may hold gRPC state
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    req_shares = None
    if total_requests is not None:
        req_shares = [
            total_requests // processes + (1 if i < total_requests % processes else 0) for i in range(processes)
        ]
    pipes, procs = [], []
    for i, share in enumerate(shares):
        parent, child = ctx.Pipe()
        p = ctx.Process(
            target=_client_process,
            daemon=True,
            args=(
                address,
                payload,
                share,
                max(1, min(channels_per_process, share)),
                child,
                req_shares[i] if req_shares else None,
            ),
        )
        p.start()
        pipes.append(parent)
        procs.append(p)
    try:
        for conn in pipes:
            if not conn.poll(120):
                raise RuntimeError("a load-generator process did not become ready in 120 s")
            msg = conn.recv()
            if msg[0] != "ready":
                raise RuntimeError(f"load generator failed to connect to {address}: {msg[1]}")
        t_start = time.monotonic() + 0.2
        t_measure = t_start + (0.0 if total_requests is not None else warmup_s)
        t_end = t_measure + (duration_s if total_requests is None else 1e9)
        for conn in pipes:
            conn.send((t_start, t_measure, t_end))
        oks, errs, lats, cpu, samples, firsts, lasts, all_ok = 0, 0, [], 0.0, [], [], [], 0
        wait = (duration_s + warmup_s + 120) if total_requests is None else 3600
        for conn in pipes:
            if not conn.poll(wait):
                raise RuntimeError("a load-generator process did not finish")
            msg = conn.recv()
            if msg[0] != "done":
                raise RuntimeError(f"load generator failed: {msg[1]}")
            _, ok, err, lat, c, es, t_first, t_last, a = msg
            all_ok += a
            oks += ok
            errs += err
            lats.append(np.frombuffer(lat, dtype=np.float64))
            cpu += c
            samples += es
            firsts.append(t_first)
            lasts.append(t_last)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    window = duration_s if total_requests is None else (max(lasts) - min(firsts))
    return LoadResult(
        concurrency,
        processes,
        window,
        oks,
        errs,
        rows_per_request,
        np.concatenate(lats) if lats else np.zeros(0),
        cpu,
        samples,
        all_ok,
    )

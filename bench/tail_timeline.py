"""Where an open-loop tail comes from: latency, host steal and server CPU, interval by interval.

Runs one open-loop window (bench/openloop.py) against a running server and, beside it, samples every
`--interval-ms`: the hypervisor's steal time on the server's CPUs (/proc/stat) and the server process's CPU
time (/proc/PID/stat, all threads). Then, per interval of *scheduled* send time: requests, p50/p99 latency,
steal ms, server CPU ms. If the slow intervals are the ones where the host stole the server's CPU, the tail
is the host's; if the server had its CPU and still fell behind, it is the server's (or the generator's).

    python -m bench.tail_timeline --address 127.0.0.1:8001 --model lenet5-digits --rate 2000 --duration 15 \
        --server-pid PID --server-cpus 0 [--json OUT]

Pin the generator elsewhere (BENCH_CLIENT_CPUS=1) so that it does not share the server's core.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np

from bench.loadgen import model_infer_request, parse_cpus
from bench.openloop import OpenLoopRun

TICK = os.sysconf("SC_CLK_TCK")


def steal_s(cpus: set[int]) -> float:
    """Steal time so far on `cpus` (seconds)."""
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu" and int(name[3:]) in cpus:
                total += int(fields[7])
    return total / TICK


def process_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Sampler(threading.Thread):
    """(monotonic time, steal s, server CPU s) every interval until stopped."""

    def __init__(self, pid: int, cpus: set[int], interval_s: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.cpus, self.interval_s = pid, cpus, interval_s
        self.samples: list[tuple[float, float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append((time.monotonic(), steal_s(self.cpus), process_cpu_s(self.pid)))
            self.done.wait(self.interval_s)


def timeline(result, samples: list[tuple[float, float, float]], interval_s: float) -> list[dict]:
    """Per interval of scheduled time in the measurement window: latency of the requests scheduled in it, and the
    steal and server CPU accrued over it (interpolated from the samples)."""
    t = np.array([s[0] - result.t0 for s in samples])
    steal = np.array([s[1] for s in samples])
    cpu = np.array([s[2] for s in samples])
    rows = []
    start = result.warmup_s
    while start < result.warmup_s + result.duration_s - 1e-9:
        end = start + interval_s
        m = result.window_mask(start, end)
        ok = m & (result.code == 0)
        lat = result.latency[ok] * 1e3
        rows.append(
            {
                "t_s": round(start - result.warmup_s, 3),
                "requests": int(m.sum()),
                "failed": int((m & ~ok).sum()),
                "p50_ms": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
                "p99_ms": round(float(np.percentile(lat, 99)), 3) if lat.size else None,
                "steal_ms": round(float(np.interp(end, t, steal) - np.interp(start, t, steal)) * 1e3, 1),
                "server_cpu_ms": round(float(np.interp(end, t, cpu) - np.interp(start, t, cpu)) * 1e3, 1),
            }
        )
        start = end
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.tail_timeline", description=__doc__.split("\n")[0])
    ap.add_argument("--address", required=True, help="gRPC HOST:PORT of a running server")
    ap.add_argument("--model", required=True)
    ap.add_argument("--rate", type=float, required=True, help="offered requests/s (Poisson)")
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--server-pid", type=int, required=True)
    ap.add_argument("--server-cpus", default="0", help="the CPUs the server is pinned to (their steal is counted)")
    ap.add_argument("--interval-ms", type=float, default=250.0)
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args(argv)
    interval_s = args.interval_ms / 1e3
    run = OpenLoopRun(
        args.address, model_infer_request(args.model, 1), args.rate, duration_s=args.duration, warmup_s=args.warmup
    )
    sampler = Sampler(args.server_pid, parse_cpus(args.server_cpus), min(0.05, interval_s / 5))
    sampler.start()
    run.start()
    result = run.wait()
    sampler.done.set()
    sampler.join()
    rows = timeline(result, sampler.samples, interval_s)
    s = result.summary()
    print(
        f"offered {args.rate:g}/s for {args.duration:g} s: p50 {s['p50_ms']} p99 {s['p99_ms']} p99.9 {s['p99.9_ms']} ms, "
        f"failed {s['failed']}, host steal (all CPUs) {s['host_steal_s']} s"
    )
    print(f"{'t s':>7} {'req':>5} {'fail':>4} {'p50 ms':>7} {'p99 ms':>8} {'steal ms':>8} {'srv CPU ms':>10}")
    for r in rows:
        print(
            f"{r['t_s']:7.2f} {r['requests']:5d} {r['failed']:4d} {r['p50_ms'] or 0:7.2f} {r['p99_ms'] or 0:8.2f} "
            f"{r['steal_ms']:8.1f} {r['server_cpu_ms']:10.1f}"
        )
    worst = sorted(rows, key=lambda r: -(r["p99_ms"] or 0))[: max(1, len(rows) // 10)]
    rest = [r for r in rows if r not in worst]
    for name, part in (("slowest 10 % of intervals", worst), ("the other intervals", rest)):
        if part:
            print(
                f"{name}: mean p99 {np.mean([r['p99_ms'] or 0 for r in part]):.2f} ms, mean steal "
                f"{np.mean([r['steal_ms'] for r in part]):.1f} ms, mean server CPU {np.mean([r['server_cpu_ms'] for r in part]):.1f} ms "
                f"per {args.interval_ms:g} ms"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "summary": {k: v for k, v in s.items() if k != "histogram"},
                    "interval_ms": args.interval_ms,
                    "rows": rows,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

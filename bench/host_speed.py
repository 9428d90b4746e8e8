"""How steady this machine's CPU speed is: a fixed pure-Python workload, timed per interval, on each CPU named.

A benchmark that sets its load as a fraction of a maximum measured earlier assumes the machine is as fast now as
it was then. On a shared virtual machine that need not hold even when /proc/stat shows no steal time (a busy
SMT sibling, another tenant's cache and memory traffic, frequency changes): the same work then takes more CPU
time. This runs a fixed unit of work in a loop, pinned to each CPU given (in parallel, one process each), and
prints per interval the units done per CPU-second, so a speed change shows as a step in the trace.

    python -m bench.host_speed --cpus 0 --seconds 60 [--interval-s 0.5] [--json OUT]

Reads: the trace per CPU (hundreds of units per CPU-second), and its p10, median, p90 and p90 / p10.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np


def _unit() -> int:
    s = 0
    for i in range(2000):
        s += i * i
    return s


def trace(seconds: float, interval_s: float, cpu: int | None = None) -> list[float]:
    """Units of fixed work per CPU-second, one value per `interval_s` of wall time, for `seconds`."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0, c0, n = time.monotonic(), time.process_time(), 0
        while time.monotonic() - t0 < interval_s:
            _unit()
            n += 1
        out.append(n / max(1e-9, time.process_time() - c0))
    return out


def _child(args) -> list[float]:
    return trace(*args)


def summary(values: list[float]) -> dict:
    a = np.asarray(values)
    p10, med, p90 = np.percentile(a, [10, 50, 90])
    return {
        "intervals": int(a.size),
        "min": float(a.min()),
        "p10": float(p10),
        "median": float(med),
        "p90": float(p90),
        "max": float(a.max()),
        "p90_over_p10": float(p90 / p10),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.host_speed", description=__doc__.split("\n")[0])
    ap.add_argument("--cpus", default="0", help="comma-separated CPUs, measured at the same time (default 0)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--interval-s", type=float, default=0.5)
    ap.add_argument("--json", help="write traces and summaries here too")
    args = ap.parse_args(argv)
    cpus = [int(c) for c in args.cpus.split(",") if c.strip()]
    with mp.get_context("spawn").Pool(len(cpus)) as pool:
        traces = pool.map(_child, [(args.seconds, args.interval_s, c) for c in cpus])
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "interval_s": args.interval_s,
        "cpus": {str(c): {"trace": [round(v) for v in t], **summary(t)} for c, t in zip(cpus, traces, strict=True)},
    }
    for c, r in result["cpus"].items():
        print(f"CPU {c}, hundreds of units per CPU-second per {args.interval_s:g} s:")
        print("  " + " ".join(f"{v / 100:.0f}" for v in r["trace"]))
        print(
            f"  p10 {r['p10'] / 100:.0f}, median {r['median'] / 100:.0f}, p90 {r['p90'] / 100:.0f}: "
            f"p90 / p10 = {r['p90_over_p10']:.2f}, max / min = {r['max'] / r['min']:.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The compute reference: onnxruntime alone, same file, same session options, same thread budget.

Sessions are built by the server's own `ThreadRuntime` from the model's `config.yaml` (intra/inter-op
threads, graph optimisation, spinning off), so "raw" differs from "served" only by everything around
`session.run`: gRPC, protobuf, numpy conversions, the batcher, metrics. One thread calls `run` in a
loop, as the server's single batcher worker does with `instances: 1`.
"""

from __future__ import annotations

import statistics
import time
from functools import lru_cache
from pathlib import Path

import numpy as np


@lru_cache(maxsize=8)
def _runtime(model_dir: str, version: int = 1):
    from server.repository import load_model_config
    from server.runtime.threads import ThreadRuntime

    cfg = load_model_config(Path(model_dir))
    return ThreadRuntime(Path(model_dir) / str(version) / "model.onnx", cfg, version)


def measure(model_dir: Path, batch: int, seconds: float = 1.0, repeats: int = 3, seed: int = 0) -> dict:
    """images/s (batch / median run time) and per-run latency of `session.run` at `batch` rows, over
    `repeats` windows of `seconds`; the wall-clock rate is kept as images_per_s_wall."""
    import os

    from bench.loadgen import parse_cpus

    if os.environ.get("BENCH_SERVER_CPUS"):  # the server's CPUs: same thread budget, same cores
        os.sched_setaffinity(0, parse_cpus(os.environ["BENCH_SERVER_CPUS"]))
    rt = _runtime(str(model_dir))
    spec = rt.input
    x = (
        np.random.default_rng(seed)
        .standard_normal((batch, *[d if d > 0 else 1 for d in spec.shape]))
        .astype(spec.dtype)
    )
    sess = rt.sessions[0]
    names = [o.name for o in rt.outputs]
    feed = {spec.name: x}
    for _ in range(3):
        sess.run(names, feed)
    rates, runs_all = [], []
    for _ in range(repeats):
        runs = []
        t_end = time.perf_counter() + seconds
        t_first = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            sess.run(names, feed)
            t1 = time.perf_counter()
            runs.append(t1 - t0)
            if t1 >= t_end and len(runs) >= 5:
                break
        rates.append(batch * len(runs) / (t1 - t_first))
        runs_all += runs
    p50 = float(np.percentile(runs_all, 50))
    # The reference is the steady state, batch / median run time: preemption by other processes on a shared
    # machine inflates the mean (and wall-clock rate) but hardly the median. On a quiet machine they agree;
    # on a busy one this is the stricter reference for the server.
    return {
        "batch": batch,
        "images_per_s": batch / p50,
        "images_per_s_wall": statistics.median(rates),
        "images_per_s_wall_all": [round(r, 1) for r in rates],
        "run_p50_ms": p50 * 1e3,
        "run_mean_ms": float(np.mean(runs_all)) * 1e3,
        "runs": len(runs_all),
        "intra_op_threads": rt.config.intra_op_threads,
        "inter_op_threads": rt.config.inter_op_threads,
    }


def mixture(
    model_dir: Path,
    batches: dict[int, tuple[int, int]],
    seconds: float = 0.5,
    repeats: int = 3,
    coverage: float = 0.97,
    cache: dict | None = None,
) -> dict:
    """Raw images/s at the batch-size mix the batcher chose.

    `batches` is ModelStatistics batch_stats over the window: {size: (executions, server infer ns)}. The
    raw time of each execution is the raw per-run time at that size (sizes covering `coverage` of the rows
    are measured; the rest take the nearest measured size): raw images/s = rows / sum(raw time)."""
    cache = {} if cache is None else cache
    rows_by = {b: b * c for b, (c, _) in batches.items()}
    total_rows = sum(rows_by.values())
    if not total_rows:
        return {"images_per_s": float("nan"), "measured_sizes": [], "mean_batch": float("nan")}
    measured, acc = [], 0
    for b in sorted(rows_by, key=rows_by.get, reverse=True):
        measured.append(b)
        acc += rows_by[b]
        if acc >= coverage * total_rows or len(measured) >= 12:
            break
    for b in measured:
        if b not in cache:
            cache[b] = measure(model_dir, b, seconds=seconds, repeats=repeats)
    raw_time, server_time = 0.0, 0.0
    for b, (c, ns) in batches.items():
        near = min(measured, key=lambda m: abs(m - b))
        per_image = 1.0 / cache[near]["images_per_s"]
        raw_time += c * b * per_image
        server_time += ns / 1e9
    execs = sum(c for c, _ in batches.values())
    return {
        "images_per_s": total_rows / raw_time,
        "mean_batch": total_rows / execs,
        "rows": total_rows,
        "executions": execs,
        "measured_sizes": sorted(measured),
        "server_infer_images_per_s": total_rows / server_time if server_time else float("nan"),
        "mode_batch": max(batches, key=lambda b: batches[b][0]),
    }

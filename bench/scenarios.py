"""The scenarios of the benchmark (issue 8; 7-9 from issue 21). Each measures its own reference in the same run and
writes sN_<name>.json / .md / .png into the run folder. Shared parts: bench/scenario_kit.py.

1 tiny model, one image per request: server vs a bare grpc.aio echo server (bench/echo.py)
2 compute-bound model, one image per request: server vs raw onnxruntime at the batcher's batch mix
3 client-side batches of 64: server vs raw onnxruntime at batch 64
4 dynamic batching on vs off, and max_queue_delay_us vs p99
5 one vs two server processes on one port (SO_REUSEPORT)
6 resident memory after warm-up and after many requests; cold start to ServerReady
7 tail latency under open-loop load: max sustainable rate, p50/p99/p99.9 at 10-95 % of it (bench/tail.py)
8 memory across batch sizes: onnxruntime memory settings compared, mixed-batch server soak (bench/memory.py)
9 the cost of a reload (new version, changed config.yaml) under open-loop load (bench/reload.py)
"""

from __future__ import annotations

from bench.closed_loop import s1_tiny_vs_echo, s2_compute_vs_raw, s3_client_batches, s4_batching
from bench.scenario_kit import MODES, Ctx, Mode
from bench.workers_memory import s5_workers, s6_memory_cold_start

__all__ = ["DEFAULT_SCENARIOS", "MODES", "SCENARIOS", "Ctx", "Mode"]


# --------------------------------------------------------------------------------------------------
# 7-9 (issue 21: real traffic), in their own modules; imported when run


def s7_open_loop(ctx: Ctx) -> dict:
    """Tail latency under open-loop load: max sustainable rate, then p50/p99/p99.9 at 10-95 % of it (bench/tail.py)."""
    from bench.tail import s7_open_loop as run

    return run(ctx)


def s8_memory_batches(ctx: Ctx) -> dict:
    """Memory across batch sizes: onnxruntime memory settings side by side, then a mixed-batch server soak (bench/memory.py)."""
    from bench.memory import s8_memory_batches as run

    return run(ctx)


def s9_reload(ctx: Ctx) -> dict:
    """The cost of a reload under open-loop load at 80 % of the max rate (bench/reload.py)."""
    from bench.reload import s9_reload as run

    return run(ctx)


SCENARIOS = {
    1: s1_tiny_vs_echo,
    2: s2_compute_vs_raw,
    3: s3_client_batches,
    4: s4_batching,
    5: s5_workers,
    6: s6_memory_cold_start,
    7: s7_open_loop,
    8: s8_memory_batches,
    9: s9_reload,
}
DEFAULT_SCENARIOS = [1, 2, 3, 4, 5, 6]  # 7-9 on request (--scenarios 7-9): 8 in full mode runs for an hour

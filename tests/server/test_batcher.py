"""DynamicBatcher with a fake runtime (a blocking callable on InstanceThreads, as ThreadRuntime runs
sessions): ordering, splitting, timeouts, queue full, cancellation, errors, lone runs on the loop."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from server.core.batcher import BatchReport, DynamicBatcher
from server.errors import DeadlineExceeded, InternalError, Unavailable
from server.runtime.threads import InstanceThreads


class FakeRuntime:
    """Doubles its input; records every batch it ran; can block or fail on demand."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[np.ndarray] = []
        self.delay_s = delay_s
        self.fail_when = None  # callable(batch) -> bool
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, inputs, instance):
        x = inputs["x"]
        self.gate.wait(10)
        self.batches.append(x.copy())
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_when and self.fail_when(x):
            raise RuntimeError("boom")
        return {"y": x * 2, "rows": np.arange(len(x))}


class Recorder:
    def __init__(self):
        self.reports: list[BatchReport] = []
        self.rejects: list[str] = []
        self.depths: list[int] = []

    def on_queue_depth(self, rows):
        self.depths.append(rows)

    def on_reject(self, reason):
        self.rejects.append(reason)

    def on_batch(self, report):
        self.reports.append(report)


def rows(start, n):
    return {"x": np.arange(start, start + n, dtype=np.float32).reshape(n, 1)}


def make(rt, obs=None, **kw):
    # inline_max_run_s=0: these tests block the fake runtime on purpose, which must happen on an instance
    # thread; running lone tiny batches on the loop is tested on its own below.
    args = dict(max_batch_size=8, max_queue_delay_s=0.05, max_queue_rows=64)
    args.update(kw)
    runner = InstanceThreads(rt, args.pop("instances", 1), "m", inline_max_run_s=args.pop("inline_max_run_s", 0.0))
    return DynamicBatcher(runner, observer=obs, name="m", **args)


def test_invalid_settings_are_rejected_eagerly_inline():
    with pytest.raises(ValueError, match="inline_max_run_s"):
        make(FakeRuntime(), inline_max_run_s=-1.0)


def test_invalid_settings_are_rejected_eagerly():
    for kw in (
        {"max_batch_size": 0},
        {"max_queue_delay_s": -1},
        {"max_queue_rows": 0},
        {"instances": 0},
        {"preferred_batch_sizes": (9,)},
    ):
        with pytest.raises(ValueError):
            make(FakeRuntime(), **kw)


def test_mixed_row_counts_batch_in_order_and_split_exactly():
    rt, obs = FakeRuntime(), Recorder()

    async def main():
        b = make(rt, obs)
        b.start()
        sizes = [1, 3, 2, 1]
        starts = np.cumsum([0] + sizes[:-1])
        outs = await asyncio.gather(*(b.submit(rows(int(s), n), n) for s, n in zip(starts, sizes)))
        await b.close()
        return sizes, starts, outs

    sizes, starts, outs = asyncio.run(main())
    assert len(rt.batches) == 1, "requests arriving together must form one batch"
    np.testing.assert_array_equal(rt.batches[0].ravel(), np.arange(7))  # arrival order
    for s, n, out in zip(starts, sizes, outs):
        np.testing.assert_array_equal(out["y"].ravel(), 2 * np.arange(s, s + n))
        assert out["rows"].shape == (n,)
    assert obs.reports[0].rows == 7 and obs.reports[0].requests == 4 and obs.reports[0].ok


def test_batches_never_exceed_max_batch_size():
    rt = FakeRuntime()

    async def main():
        b = make(rt, max_batch_size=4)
        b.start()
        outs = await asyncio.gather(*(b.submit(rows(i * 3, 3), 3) for i in range(5)))
        await b.close()
        return outs

    outs = asyncio.run(main())
    assert all(len(x) <= 4 for x in rt.batches)
    assert sum(len(x) for x in rt.batches) == 15
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["y"].ravel(), 2 * np.arange(i * 3, i * 3 + 3))


def test_full_batch_dispatches_without_waiting_for_the_delay():
    rt = FakeRuntime()

    async def main():
        b = make(rt, max_batch_size=4, max_queue_delay_s=5.0)
        b.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(b.submit(rows(i, 1), 1) for i in range(4)))
        dt = time.perf_counter() - t0
        await b.close()
        return dt

    assert asyncio.run(main()) < 2.0


def test_queue_full_answers_unavailable_at_once():
    rt, obs = FakeRuntime(), Recorder()
    rt.gate.clear()  # the first batch blocks inside the runtime

    async def main():
        b = make(rt, obs, max_batch_size=2, max_queue_rows=4, max_queue_delay_s=0)
        b.start()
        first = asyncio.ensure_future(b.submit(rows(0, 2), 2))
        await asyncio.sleep(0.05)  # taken by the worker, blocked in the runtime
        queued = [asyncio.ensure_future(b.submit(rows(2 + i, 2), 2)) for i in range(2)]
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        with pytest.raises(Unavailable, match="queue is full"):
            await b.submit(rows(9, 1), 1)
        refused_in = time.perf_counter() - t0
        rt.gate.set()
        done = await asyncio.gather(first, *queued)
        await b.close()
        return refused_in, done

    refused_in, done = asyncio.run(main())
    assert refused_in < 0.05
    assert len(done) == 3 and obs.rejects == ["queue_full"]


def test_deadline_passed_in_queue_is_not_computed():
    rt, obs = FakeRuntime(), Recorder()
    rt.gate.clear()

    async def main():
        b = make(rt, obs, max_batch_size=1, max_queue_delay_s=0)
        b.start()
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(b.submit(rows(0, 1), 1))
        await asyncio.sleep(0.05)
        late = asyncio.ensure_future(b.submit(rows(100, 1), 1, deadline=loop.time() + 0.05))
        await asyncio.sleep(0.2)
        rt.gate.set()
        await first
        with pytest.raises(DeadlineExceeded, match="not computed"):
            await late
        await b.close()

    asyncio.run(main())
    assert all(100 not in x for x in rt.batches), "an expired request reached the model"
    assert "deadline" in obs.rejects


def test_cancelled_request_leaves_the_queue():
    rt, obs = FakeRuntime(), Recorder()
    rt.gate.clear()

    async def main():
        b = make(rt, obs, max_batch_size=2, max_queue_delay_s=0, max_queue_rows=3)
        b.start()
        first = asyncio.ensure_future(b.submit(rows(0, 2), 2))
        await asyncio.sleep(0.05)
        victim = asyncio.ensure_future(b.submit(rows(50, 2), 2))
        await asyncio.sleep(0.01)
        assert b.queued_rows == 2
        victim.cancel()
        await asyncio.sleep(0.01)
        assert b.queued_rows == 0, "a cancelled request must free its queue rows"
        rt.gate.set()
        await first
        await b.close()

    asyncio.run(main())
    assert all(50 not in x for x in rt.batches)
    assert "cancelled" in obs.rejects


def test_exception_fails_only_its_own_batch():
    rt, obs = FakeRuntime(), Recorder()
    rt.fail_when = lambda x: 13 in x

    async def main():
        b = make(rt, obs, max_batch_size=2, max_queue_delay_s=0.02)
        b.start()
        bad = b.submit(rows(12, 2), 2)  # rows 12, 13: one batch on its own
        results = await asyncio.gather(bad, return_exceptions=True)
        good = await asyncio.gather(b.submit(rows(0, 1), 1), b.submit(rows(1, 1), 1))
        await b.close()
        return results, good

    results, good = asyncio.run(main())
    assert isinstance(results[0], InternalError) and "boom" in str(results[0])
    assert [g["y"].item() for g in good] == [0.0, 2.0]
    assert [r.ok for r in obs.reports] == [False, True]


def test_wrong_output_row_count_is_an_error_for_every_waiter():
    def bad_runtime(inputs, instance):
        return {"y": inputs["x"][:1]}

    async def main():
        b = make(bad_runtime, max_batch_size=4, max_queue_delay_s=0.02)
        b.start()
        out = await asyncio.gather(b.submit(rows(0, 2), 2), b.submit(rows(2, 1), 1), return_exceptions=True)
        await b.close()
        return out

    out = asyncio.run(main())
    assert all(isinstance(o, InternalError) and "rows" in str(o) for o in out)


def test_close_drains_queued_requests_then_refuses():
    rt = FakeRuntime(delay_s=0.02)

    async def main():
        b = make(rt, max_batch_size=1, max_queue_delay_s=0)
        b.start()
        pending = [asyncio.ensure_future(b.submit(rows(i, 1), 1)) for i in range(5)]
        await asyncio.sleep(0)
        await b.close(drain=True)
        with pytest.raises(Unavailable):
            await b.submit(rows(9, 1), 1)
        return await asyncio.gather(*pending)

    done = asyncio.run(main())
    assert [d["y"].item() for d in done] == [0, 2, 4, 6, 8]


def test_two_instances_run_batches_in_parallel():
    active, peak, lock = [0], [0], threading.Lock()

    def slow(inputs, instance):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.1)
        with lock:
            active[0] -= 1
        return {"y": inputs["x"]}

    async def main():
        b = make(slow, max_batch_size=1, max_queue_delay_s=0, instances=2)
        b.start()
        await asyncio.gather(*(b.submit(rows(i, 1), 1) for i in range(4)))
        await b.close()

    asyncio.run(main())
    assert peak[0] == 2


def test_merge_off_runs_each_request_alone():
    """dynamic_batching: null -> merge=False: requests that queue while the instance is busy still run one by one."""
    rt = FakeRuntime()

    async def main():
        b = make(rt, max_queue_delay_s=0, merge=False)
        b.start()
        rt.gate.clear()  # the first request blocks the instance; the others queue behind it
        pending = [asyncio.ensure_future(b.submit(rows(i, 2), 2)) for i in range(4)]
        await asyncio.sleep(0.05)
        rt.gate.set()
        await asyncio.gather(*pending)
        await b.close()

    asyncio.run(main())
    assert [len(x) for x in rt.batches] == [2, 2, 2, 2]


def test_lone_tiny_batches_run_on_the_loop_and_company_goes_to_the_instance_thread():
    threads: list[str] = []

    def rt(inputs, instance):
        threads.append(threading.current_thread().name)
        time.sleep(float(inputs["x"][0, 0]))  # the first value says how long this call takes
        return {"y": inputs["x"] * 2}

    loop_thread = threading.current_thread().name

    async def main():
        b = make(rt, max_queue_delay_s=0.0, inline_max_run_s=0.01)
        b.start()
        try:
            first = await b.submit({"x": np.zeros((1, 1), np.float32)}, 1)  # unknown cost: a thread
            lone = [await b.submit({"x": np.zeros((1, 1), np.float32)}, 1) for _ in range(3)]
            together = await asyncio.gather(*(b.submit({"x": np.zeros((1, 1), np.float32)}, 1) for _ in range(6)))
            for a in (first, *lone, *together):
                assert a["y"].shape == (1, 1)
            inline_after_company = b.runner.inline_runs
            slow = await b.submit({"x": np.full((1, 1), 0.2, np.float32)}, 1)  # 200 ms: the estimate climbs over 10 ms
            after_slow = await b.submit({"x": np.zeros((1, 1), np.float32)}, 1)
            assert slow["y"][0, 0] == np.float32(0.4) and after_slow["y"].shape == (1, 1)
            return inline_after_company
        finally:
            await b.close()

    inline_after_company = asyncio.run(main())
    assert threads[0] != loop_thread  # first call: cost unknown
    assert threads[1:4] == [loop_thread] * 3  # alone and fast: on the loop
    assert len(threads) == 7  # the six at once ran as one batch ...
    assert threads[4] != loop_thread  # ... on the instance thread
    assert inline_after_company == 3
    assert threads[5] == loop_thread and threads[6] != loop_thread  # the 200 ms call raised the estimate


def test_inline_runs_can_be_switched_off():
    threads: list[str] = []

    def rt(inputs, instance):
        threads.append(threading.current_thread().name)
        return {"y": inputs["x"]}

    async def main():
        b = make(rt, max_queue_delay_s=0.0, inline_max_run_s=0.0)
        b.start()
        try:
            for _ in range(4):
                await b.submit({"x": np.zeros((1, 1), np.float32)}, 1)
            return b.runner.inline_runs
        finally:
            await b.close()

    assert asyncio.run(main()) == 0
    assert threading.current_thread().name not in threads


async def _staggered(b, n):
    """Request i arrives i event-loop passes after the first, as gRPC hands requests over one by one."""

    async def one(i):
        for _ in range(i):
            await asyncio.sleep(0)
        return await b.submit(rows(i, 1), 1)

    return await asyncio.gather(*(one(i) for i in range(n)))


def test_requests_arriving_over_several_loop_passes_share_a_batch():
    """No queue delay: the batch still takes what arrives while the loop keeps bringing requests."""
    rt = FakeRuntime()

    async def main():
        b = make(rt, max_batch_size=8, max_queue_delay_s=0.0)
        b.start()
        outs = await _staggered(b, 8)
        patience = b.gather_patience
        await b.close()
        return outs, patience

    outs, patience = asyncio.run(main())
    assert [len(x) for x in rt.batches] == [8], "eight requests one loop pass apart must form one batch"
    np.testing.assert_array_equal(rt.batches[0].ravel(), np.arange(8))
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["y"].ravel(), [2 * i])
    assert patience > 1, "gathering that found company raises the patience"


def test_gather_patience_falls_back_to_one_pass_when_requests_come_alone():
    rt = FakeRuntime()

    async def main():
        b = make(rt, max_batch_size=8, max_queue_delay_s=0.0)
        b.start()
        await _staggered(b, 8)
        raised = b.gather_patience
        for i in range(6):  # one at a time: waiting finds nobody, so the patience halves each time
            await b.submit(rows(i, 1), 1)
        lone = b.gather_patience
        await b.close()
        return raised, lone

    raised, lone = asyncio.run(main())
    assert raised > 1 and lone == 1
    assert [len(x) for x in rt.batches] == [8, 1, 1, 1, 1, 1, 1]


def test_batching_off_never_gathers():
    rt = FakeRuntime()

    async def main():
        b = make(rt, max_batch_size=8, max_queue_delay_s=0.0, merge=False)
        b.start()
        await _staggered(b, 4)
        await b.close()

    asyncio.run(main())
    assert [len(x) for x in rt.batches] == [1, 1, 1, 1]


def test_a_busy_instance_gets_its_next_batch_without_gathering():
    """A compute-bound model (here 20 ms a batch) keeps its instance busy: the next batch leaves at once."""
    rt = FakeRuntime(delay_s=0.02)

    async def main():
        b = make(rt, max_batch_size=8, max_queue_delay_s=0.0)
        b.start()
        for _ in range(12):  # keep a request queued while each batch runs
            await asyncio.gather(*(b.submit(rows(i, 1), 1) for i in range(3)))
        busy = b.busy_fraction
        before = len(rt.batches)
        await _staggered(b, 8)  # arrivals one loop pass apart: not waited for while the instance is busy
        await b.close()
        return busy, [len(x) for x in rt.batches[before:]]

    busy, sizes = asyncio.run(main())
    assert busy > 0.5, busy
    # the first arrival (or two) leaves at once; the rest queue while it runs (an idle instance: one batch of 8,
    # test_requests_arriving_over_several_loop_passes_share_a_batch)
    assert len(sizes) == 2 and sizes[0] <= 2 and sum(sizes) == 8, sizes


def test_close_without_drain_refuses_the_queue_and_reports_it_empty():
    rt, obs = FakeRuntime(), Recorder()
    rt.gate.clear()  # the first batch blocks inside the runtime

    async def main():
        b = make(rt, obs, max_batch_size=2, max_queue_delay_s=0)
        b.start()
        first = asyncio.ensure_future(b.submit(rows(0, 2), 2))
        await asyncio.sleep(0.05)  # taken by the worker, blocked in the runtime
        queued = [asyncio.ensure_future(b.submit(rows(2 + i, 2), 2)) for i in range(2)]
        await asyncio.sleep(0.01)
        depth_before = obs.depths[-1]
        closing = asyncio.ensure_future(b.close(drain=False))
        await asyncio.sleep(0.01)
        rt.gate.set()
        await closing
        return depth_before, await asyncio.gather(first, *queued, return_exceptions=True)

    depth_before, results = asyncio.run(main())
    assert depth_before == 4 and obs.depths[-1] == 0
    assert isinstance(results[0], dict) and all(isinstance(r, Unavailable) for r in results[1:])


def test_queue_depth_gauge_sums_every_live_batcher_of_a_model():
    """cnn_queue_depth_rows{model}: the main batcher's rows plus a second one's (another version, or the
    Explain CAM batcher), each reported by its own observer; a retired batcher's observer drops out."""
    import gc

    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from server.core.stats import BatchStatsObserver, VersionStats
    from server.metrics import Metrics

    m = Metrics()

    def depth(model):
        for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
            for s in fam.samples:
                if s.name == "cnn_queue_depth_rows" and s.labels["model"] == model:
                    return s.value
        return None

    rt1, rt2 = FakeRuntime(), FakeRuntime()
    rt1.gate.clear()
    rt2.gate.clear()
    main_obs = BatchStatsObserver("m", 1, VersionStats(), m)
    live = {"other": BatchStatsObserver("m", 2, VersionStats(), m)}  # popped below: the batcher retires
    BatchStatsObserver("n", 1, VersionStats(), m)

    async def main():
        a, b = (
            make(rt1, main_obs, max_batch_size=2, max_queue_delay_s=0),
            make(rt2, live["other"], max_batch_size=2, max_queue_delay_s=0),
        )
        a.start()
        b.start()
        futs = [asyncio.ensure_future(a.submit(rows(0, 2), 2)), asyncio.ensure_future(b.submit(rows(0, 2), 2))]
        await asyncio.sleep(0.05)  # each first batch blocked in its runtime
        futs += [asyncio.ensure_future(a.submit(rows(2, 2), 2)), asyncio.ensure_future(a.submit(rows(4, 1), 1))]
        futs += [asyncio.ensure_future(b.submit(rows(2, 2), 2))]
        await asyncio.sleep(0.01)
        during = depth("m"), depth("n")
        rt1.gate.set()
        rt2.gate.set()
        await asyncio.gather(*futs)
        after = depth("m")
        await a.close()
        await b.close()
        return during, after

    during, after = asyncio.run(main())
    assert during == (5.0, 0.0)  # 3 rows queued behind version 1's batch, 2 behind the other's; none for n
    assert after == 0.0
    live["other"].rows = 7
    assert depth("m") == 7.0
    live.pop("other")
    gc.collect()
    assert depth("m") == 0.0  # retired: its rows no longer count

"""Dynamic batching: many callers' rows -> one model execution -> results split back exactly.

No gRPC and no onnxruntime imports: the batcher is handed a blocking `run_batch(inputs, instance)`
callable and runs it on its own instance threads (a lone request to a model whose call takes under
INLINE_MAX_RUN_S runs on the event loop instead), or an async `run_batch_async` that it awaits on the loop
(instances in child processes, server/instance_process.py); one worker task per model instance. Requests are counted by
rows (a request of 5 images is 5 rows), batched in arrival order up to `max_batch_size` rows, and
dispatched once an instance is free and the event loop stops bringing new requests (MAX_GATHER_PATIENCE),
when the batch is full or reaches a preferred size, or after the oldest request has waited
`max_queue_delay_s` (if that is set). A full queue refuses at once (Unavailable); a request whose deadline passes while
queued is dropped before compute (DeadlineExceeded); a cancelled request leaves the queue; an
exception fails only the requests of its own batch.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

import numpy as np

from server.errors import DeadlineExceeded, InternalError, ServingError, Unavailable

log = logging.getLogger(__name__)

RunBatch = Callable[[dict[str, np.ndarray], int], dict[str, np.ndarray]]  # (inputs, instance) -> outputs
# awaited on the loop: (inputs, instance) -> (outputs, seconds the model itself computed)
RunBatchAsync = Callable[[dict[str, np.ndarray], int], Awaitable[tuple[dict[str, np.ndarray], float]]]
# A model call expected to take less than this runs on the event loop itself when its request is the only
# one in the batcher: the hop to an instance thread and back (two thread wake-ups) then costs several times
# the call (LeNet-5 at batch 1: ~35 us). With company waiting, batches always go to the instance threads,
# so compute overlaps the loop's gRPC work. The estimate is a decaying minimum of measured calls.
INLINE_MAX_RUN_S = 100e-6
# Before a batch leaves, the worker yields to the event loop so that requests gRPC has already received reach
# the queue (each yield is one loop pass, which polls the sockets). It stops after `patience` passes in a row
# bring nothing. The patience adapts: it doubles (up to MAX_GATHER_PATIENCE) when yielding found company and
# halves (down to 1) when it did not, so one request at a time pays one loop pass, and a busy server batches
# what its loop is still reading instead of running many tiny batches (docs/benchmarks.md).
MAX_GATHER_PATIENCE = 16
# ... but only while the model is cheap next to the time between its executions. When the instance computes most
# of the time (a compute-bound model under load), a yield would leave it idle while the loop answers the previous
# batch (ResNet-20 at c=64: ~3 ms per batch, -17 % images/s), and the queue already fills batches: dispatch at once.
# The busy fraction is a moving average of (model seconds / seconds between dispatches), over all instances.
GATHER_MAX_BUSY = 0.5


class BatchObserver(Protocol):
    """What the batcher reports; the service turns it into metrics and ModelStatistics."""

    def on_queue_depth(self, rows: int) -> None: ...
    def on_reject(self, reason: str) -> None: ...  # "queue_full", "deadline", "cancelled", "shutdown"
    def on_batch(self, report: "BatchReport") -> None: ...


@dataclass
class BatchReport:
    rows: int  # rows in the executed batch
    requests: int
    queue_waits_s: list[float]  # one per request
    compute_input_s: float  # concatenation
    compute_infer_s: float  # onnxruntime
    compute_output_s: float  # splitting + answering
    ok: bool
    instance: int = 0


class _NullObserver:
    def on_queue_depth(self, rows: int) -> None:
        pass

    def on_reject(self, reason: str) -> None:
        pass

    def on_batch(self, report: BatchReport) -> None:
        pass


@dataclass(eq=False)
class _Request:
    inputs: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future
    deadline: float | None  # loop.time() seconds; None = none
    t_enqueue: float
    t_enqueue_wall: float = field(default_factory=time.perf_counter)
    taken: bool = False
    expired: bool = False  # failed by its deadline timer (counted as "deadline", not also as "cancelled")


def _settle(fut: asyncio.Future, result, exc: BaseException | None) -> None:
    if fut.cancelled():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class _InstanceThreads:
    """`n` threads that run blocking calls for the event loop: a SimpleQueue in, call_soon_threadsafe out.

    About half the CPU of `loop.run_in_executor` per call (no concurrent.futures.Future, no wrap_future
    chain; docs/benchmarks.md), which matters when a batch of a tiny model takes ~30 us."""

    def __init__(self, n: int, name: str) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"ort-{name}_{i}", daemon=True) for i in range(n)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            loop, fut, fn, args = item
            try:
                result, exc = fn(*args), None
            except BaseException as e:  # handed to the awaiting coroutine
                result, exc = None, e
            try:
                loop.call_soon_threadsafe(_settle, fut, result, exc)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def call(self, loop: asyncio.AbstractEventLoop, fn, *args) -> asyncio.Future:
        fut = loop.create_future()
        self._queue.put((loop, fut, fn, args))
        return fut

    def shutdown(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()


class DynamicBatcher:
    def __init__(self, run_batch: RunBatch | None, *, max_batch_size: int, max_queue_delay_s: float,
                 max_queue_rows: int, preferred_batch_sizes: tuple[int, ...] = (), instances: int = 1,
                 executor: Executor | None = None, observer: BatchObserver | None = None, name: str = "model",
                 merge: bool = True, inline_max_run_s: float = INLINE_MAX_RUN_S,
                 run_batch_async: RunBatchAsync | None = None) -> None:
        """`run_batch` runs on the batcher's instance threads (or `executor`); `run_batch_async` instead is awaited
        on the event loop (an instance that computes elsewhere, e.g. in a child process)."""
        # Validate eagerly: a bad setting is a configuration error now, not a hang later.
        if (run_batch is None) == (run_batch_async is None):
            raise ValueError("give exactly one of run_batch and run_batch_async")
        if run_batch_async is not None and executor is not None:
            raise ValueError("executor applies to run_batch only")
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
        if not max_queue_delay_s >= 0:
            raise ValueError(f"max_queue_delay_s must be >= 0, got {max_queue_delay_s!r}")
        if not isinstance(max_queue_rows, int) or max_queue_rows < 1:
            raise ValueError(f"max_queue_rows must be a positive integer, got {max_queue_rows!r}")
        if not isinstance(instances, int) or instances < 1:
            raise ValueError(f"instances must be a positive integer, got {instances!r}")
        if not inline_max_run_s >= 0:
            raise ValueError(f"inline_max_run_s must be >= 0, got {inline_max_run_s!r}")
        for b in preferred_batch_sizes:
            if not 1 <= b <= max_batch_size:
                raise ValueError(f"preferred batch size {b} is outside 1..{max_batch_size}")
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = float(max_queue_delay_s)
        self.max_queue_rows = max_queue_rows
        self.preferred = frozenset(preferred_batch_sizes)
        self.max_preferred = max(preferred_batch_sizes, default=max_batch_size)
        self.instances = instances
        self.merge = merge  # False: one request per execution (dynamic_batching: null)
        self._run_batch = run_batch
        self._run_batch_async = run_batch_async
        self._executor = executor  # None: the batcher's own threads, one per instance
        self._threads = _InstanceThreads(instances, name) if executor is None and run_batch is not None else None
        self._observer = observer or _NullObserver()
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_rows = 0
        self._executing = 0
        self._waiting = 0  # requests inside submit(): queued, executing, or being answered
        self.inline_max_run_s = float(inline_max_run_s)  # 0: never run on the loop
        self._run_s = float("inf")  # estimated cost of one model call, seconds (unknown: inf); see _timed_run
        self.inline_runs = 0  # executions that ran on the event loop (for tests and statistics)
        self._patience = 1  # loop passes without a new request before a batch leaves; see _gather_arrivals
        self._busy = 0.0  # moving average of the instances' busy fraction; see GATHER_MAX_BUSY
        self._wakeup: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []
        self._closed = False

    # ---------------------------------------------------------------------------------------------
    # lifecycle

    def start(self) -> None:
        """Start one worker per instance on the running event loop."""
        if self._workers:
            return
        self._wakeup = asyncio.Event()
        self._workers = [asyncio.get_running_loop().create_task(self._worker(i), name=f"batcher-{self.name}-{i}")
                         for i in range(self.instances)]

    async def close(self, drain: bool = True) -> None:
        """Stop taking requests; with drain, finish every queued and executing request first."""
        self._closed = True
        if not drain:
            while self._queue:
                r = self._queue.popleft()
                if not r.future.done():
                    r.future.set_exception(Unavailable(f"model '{self.name}' is unloading"))
                    self._observer.on_reject("shutdown")
            self._queued_rows = 0
        if self._wakeup is not None:
            self._wakeup.set()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        if self._threads is not None:
            self._threads.shutdown()

    @property
    def busy_fraction(self) -> float:
        """Moving average of model seconds / seconds between dispatches (0..1); gathering stops above GATHER_MAX_BUSY."""
        return self._busy

    @property
    def gather_patience(self) -> int:
        """Loop passes without a new request after which the next batch leaves (1..MAX_GATHER_PATIENCE)."""
        return self._patience

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def idle(self) -> bool:
        return not self._queue and self._executing == 0

    # ---------------------------------------------------------------------------------------------
    # callers

    async def submit(self, inputs: dict[str, np.ndarray], rows: int, deadline: float | None = None) -> dict[str, np.ndarray]:
        """Queue `rows` rows (every input's first axis) and wait for their outputs.

        `deadline` is in `loop.time()` seconds. Raises Unavailable (queue full / closed),
        DeadlineExceeded (not computed in time) or whatever the batch's execution raised."""
        if self._closed or self._wakeup is None:
            self._observer.on_reject("shutdown")
            raise Unavailable(f"model '{self.name}' is not accepting requests (shutting down or unloading)")
        if not 1 <= rows <= self.max_batch_size:
            raise ValueError(f"rows must be in 1..{self.max_batch_size}, got {rows}")  # the service validates first
        if self._queued_rows + rows > self.max_queue_rows:
            self._observer.on_reject("queue_full")
            raise Unavailable(f"model '{self.name}' queue is full ({self._queued_rows} of {self.max_queue_rows} rows waiting); retry later")
        loop = asyncio.get_running_loop()
        now = loop.time()
        if deadline is not None and deadline <= now:
            self._observer.on_reject("deadline")
            raise DeadlineExceeded(f"the request's deadline passed before it was queued for model '{self.name}'")
        req = _Request(inputs, rows, loop.create_future(), deadline, now)
        self._queue.append(req)
        self._queued_rows += rows
        self._observer.on_queue_depth(self._queued_rows)
        self._wakeup.set()
        # One loop timer per request instead of asyncio.wait (which builds a waiter future, a timeout handle and
        # done-callbacks each time): ~24 us less per request with a deadline (docs/benchmarks.md).
        timer = loop.call_at(deadline, self._expire, req) if deadline is not None else None
        self._waiting += 1
        try:
            return await req.future
        except asyncio.CancelledError:
            if not req.taken and not req.expired:
                self._observer.on_reject("cancelled")
            raise
        finally:
            self._waiting -= 1
            if timer is not None:
                timer.cancel()
            if not req.taken:  # cancelled or timed out in the queue: leave it now, free its rows
                try:
                    self._queue.remove(req)
                    self._queued_rows -= req.rows
                    self._observer.on_queue_depth(self._queued_rows)
                except ValueError:
                    pass

    def _expire(self, req: _Request) -> None:
        """The request's deadline passed: fail it (unless answered); a queued one is then skipped by the workers."""
        if req.future.done():
            return
        req.expired = True
        self._observer.on_reject("deadline")
        where = "while it was being computed" if req.taken else "while it was queued; it was not computed"
        req.future.set_exception(DeadlineExceeded(f"the request's deadline passed {where} (model '{self.name}')"))

    # ---------------------------------------------------------------------------------------------
    # workers

    async def _gather_arrivals(self) -> None:
        """Yield to the loop while passes keep bringing requests (see MAX_GATHER_PATIENCE)."""
        start = len(self._queue)
        idle = 0
        while self._queue and not self._closed and not self._ready_to_dispatch() and idle < self._patience:
            n = len(self._queue)
            await asyncio.sleep(0)
            idle = idle + 1 if len(self._queue) == n else 0
        if len(self._queue) > start:
            self._patience = min(MAX_GATHER_PATIENCE, self._patience * 2)
        else:
            self._patience = max(1, self._patience // 2)

    def _ready_to_dispatch(self) -> bool:
        rows = self._queued_rows
        return rows >= self.max_batch_size or rows >= self.max_preferred or rows in self.preferred

    async def _next_batch(self) -> list[_Request] | None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            while not self._queue:
                if self._closed:
                    return None
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.merge and self._busy < GATHER_MAX_BUSY:
                await self._gather_arrivals()
            # Gather: wait for company until the batch is full or the oldest request has waited enough.
            while self._queue and not self._closed and not self._ready_to_dispatch():
                remaining = self._queue[0].t_enqueue + self.max_queue_delay_s - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch, rows, now = [], 0, loop.time()
            while self._queue and rows + self._queue[0].rows <= self.max_batch_size and (self.merge or not batch):
                r = self._queue.popleft()
                self._queued_rows -= r.rows
                r.taken = True
                if r.future.done():  # cancelled by its caller
                    continue
                if r.deadline is not None and r.deadline <= now:
                    self._observer.on_reject("deadline")
                    r.future.set_exception(DeadlineExceeded(
                        f"the request's deadline passed while it was queued; it was not computed (model '{self.name}')"))
                    continue
                batch.append(r)
                rows += r.rows
            self._observer.on_queue_depth(self._queued_rows)
            if batch:
                return batch

    async def _worker(self, instance: int) -> None:
        loop = asyncio.get_running_loop()
        t_prev, model_s = None, 0.0  # the previous dispatch and its model seconds
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            now = time.perf_counter()
            if t_prev is not None and now > t_prev:
                self._busy += 0.2 * (min(1.0, model_s / (now - t_prev)) - self._busy)
            t_prev, model_s = now, 0.0
            self._executing += 1
            try:
                model_s = await self._execute(loop, batch, instance)
            except Exception:  # never let a worker die: its batch was already failed in _execute
                log.exception("batch worker %s/%d", self.name, instance)
            finally:
                self._executing -= 1

    def _timed_run(self, inputs: dict[str, np.ndarray], instance: int) -> tuple[dict[str, np.ndarray], float]:
        """(outputs, seconds the model call took)."""
        t = time.perf_counter()
        outputs = self._run_batch(inputs, instance)
        dt = time.perf_counter() - t
        # A decaying minimum: drops at once to a faster call, climbs 10 % of the way to a slower one. Calls on a
        # freshly woken instance thread run 2-5x slower than the model's own cost (cold caches, a migrated
        # thread), so a plain average would never see that LeNet-5 takes ~35 us; a truly slow model still
        # climbs above the limit within a few calls.
        self._run_s = dt if dt < self._run_s else self._run_s + 0.1 * (dt - self._run_s)
        return outputs, dt

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Request], instance: int) -> float:
        """Run one batch and answer its requests; returns the seconds the model call took (0 if it failed)."""
        model_s = 0.0
        t0 = time.perf_counter()
        waits = [t0 - r.t_enqueue_wall for r in batch]
        rows = sum(r.rows for r in batch)
        report = BatchReport(rows, len(batch), waits, 0.0, 0.0, 0.0, ok=False, instance=instance)
        try:
            if len(batch) == 1:
                inputs = batch[0].inputs
            else:
                inputs = {k: np.concatenate([r.inputs[k] for r in batch], axis=0) for k in batch[0].inputs}
            t1 = time.perf_counter()
            if self._threads is not None and self._waiting == 1 and self._run_s <= self.inline_max_run_s \
                    and not self._queue:
                outputs, model_s = self._timed_run(inputs, instance)  # alone and tiny: cheaper than two thread wake-ups
                self.inline_runs += 1
            elif self._threads is not None:
                outputs, model_s = await self._threads.call(loop, self._timed_run, inputs, instance)
            elif self._run_batch_async is not None:
                outputs, model_s = await self._run_batch_async(inputs, instance)
            else:
                outputs = await loop.run_in_executor(self._executor, self._run_batch, inputs, instance)
                model_s = time.perf_counter() - t1
            t2 = time.perf_counter()
            for k, v in outputs.items():  # output count checked against input count
                if v.shape[:1] != (rows,):
                    raise InternalError(f"model '{self.name}' returned {v.shape[:1]} rows in output '{k}' for a batch of {rows}")
            start = 0
            for r in batch:
                if not r.future.done():
                    r.future.set_result({k: v[start:start + r.rows] for k, v in outputs.items()} if len(batch) > 1 else outputs)
                start += r.rows
            t3 = time.perf_counter()
            report.compute_input_s, report.compute_infer_s, report.compute_output_s = t1 - t0, t2 - t1, t3 - t2
            report.ok = True
        except Exception as e:  # exceptions reach every waiting future of this batch, and only those
            err = e if isinstance(e, ServingError) else InternalError(f"model '{self.name}' failed to run: {type(e).__name__}: {e}")
            if not isinstance(e, ServingError):
                log.error("model %s: batch of %d rows failed", self.name, rows, exc_info=e)
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(err)
            report.compute_infer_s = time.perf_counter() - t0
        finally:
            self._observer.on_batch(report)
        return model_s

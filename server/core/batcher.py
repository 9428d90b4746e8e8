"""Dynamic batching: many callers' rows -> one model execution -> results split back exactly.

No protocol and no onnxruntime imports: the batcher is handed a runner (server/runtime/base.py
`BatchRunner`: `instances` and `run_batch(inputs, instance, alone)`) and awaits it, one worker task per
instance. Requests are counted by rows (a request of 5 images is 5 rows), batched in arrival order up to
`max_batch_size` rows, and dispatched once an instance is free and the event loop stops bringing new
requests (MAX_GATHER_PATIENCE), when the batch is full or reaches a preferred size, or after the oldest
request has waited `max_queue_delay_s` (if that is set). A full queue refuses at once (Unavailable); a
request whose deadline passes while queued is dropped before compute (DeadlineExceeded); a cancelled
request leaves the queue; an exception fails only the requests of its own batch.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from server.errors import DeadlineExceeded, InternalError, ServingError, Unavailable
from server.runtime.base import BatchRunner

log = logging.getLogger(__name__)

# Before a batch leaves, the worker yields to the event loop so that requests gRPC has already received reach
# the queue (each yield is one loop pass, which polls the sockets). It stops after `patience` passes in a row
# bring nothing. The patience adapts: it doubles (up to MAX_GATHER_PATIENCE) when yielding found company and
# halves (down to 1) when it did not, so one request at a time pays one loop pass, and a busy server batches
# what its loop is still reading instead of running many tiny batches.
MAX_GATHER_PATIENCE = 16
# ... but only while the model is cheap next to the time between its executions. When the instance computes most
# of the time (a compute-bound model under load), a yield would leave it idle while the loop answers the previous
# batch, and the queue already fills batches: dispatch at once. The busy fraction is a moving average of
# (model seconds / seconds between dispatches), over all instances.
GATHER_MAX_BUSY = 0.5


class BatchObserver(Protocol):
    """What the batcher reports; the service turns it into metrics and ModelStatistics."""

    def on_queue_depth(self, rows: int) -> None: ...
    def on_reject(self, reason: str) -> None: ...  # "queue_full", "deadline", "cancelled", "shutdown"
    def on_batch(self, report: BatchReport) -> None: ...


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


class DynamicBatcher:
    def __init__(
        self,
        runner: BatchRunner,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_rows: int,
        preferred_batch_sizes: tuple[int, ...] = (),
        observer: BatchObserver | None = None,
        name: str = "model",
        merge: bool = True,
    ) -> None:
        """One worker per `runner.instances`; each awaits `runner.run_batch` (a Runtime, server/runtime/)."""
        # Validate eagerly: a bad setting is a configuration error now, not a hang later.
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
        if not max_queue_delay_s >= 0:
            raise ValueError(f"max_queue_delay_s must be >= 0, got {max_queue_delay_s!r}")
        if not isinstance(max_queue_rows, int) or max_queue_rows < 1:
            raise ValueError(f"max_queue_rows must be a positive integer, got {max_queue_rows!r}")
        instances = runner.instances
        if not isinstance(instances, int) or instances < 1:
            raise ValueError(f"instances must be a positive integer, got {instances!r}")
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
        self._runner = runner
        self._observer = observer or _NullObserver()
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_rows = 0
        self._executing = 0
        self._waiting = 0  # requests inside submit(): queued, executing, or being answered
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
        self._workers = [
            asyncio.get_running_loop().create_task(self._worker(i), name=f"batcher-{self.name}-{i}")
            for i in range(self.instances)
        ]

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
            self._observer.on_queue_depth(0)
        if self._wakeup is not None:
            self._wakeup.set()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)

    @property
    def runner(self) -> BatchRunner:
        """What computes the batches (a Runtime)."""
        return self._runner

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

    async def submit(
        self, inputs: dict[str, np.ndarray], rows: int, deadline: float | None = None
    ) -> dict[str, np.ndarray]:
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
            raise Unavailable(
                f"model '{self.name}' queue is full ({self._queued_rows} of {self.max_queue_rows} rows waiting); retry later"
            )
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
        # done-callbacks each time): cheaper per request with a deadline.
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
            batch: list[_Request] = []
            rows, now = 0, loop.time()
            while self._queue and rows + self._queue[0].rows <= self.max_batch_size and (self.merge or not batch):
                r = self._queue.popleft()
                self._queued_rows -= r.rows
                r.taken = True
                if r.future.done():  # cancelled by its caller
                    continue
                if r.deadline is not None and r.deadline <= now:
                    self._observer.on_reject("deadline")
                    r.future.set_exception(
                        DeadlineExceeded(
                            f"the request's deadline passed while it was queued; it was not computed (model '{self.name}')"
                        )
                    )
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
            # alone: no other request waits, so a runtime may compute on the loop (server/runtime/threads.py)
            outputs, model_s = await self._runner.run_batch(inputs, instance, self._waiting == 1 and not self._queue)
            t2 = time.perf_counter()
            for k, v in outputs.items():  # output count checked against input count
                if v.shape[:1] != (rows,):
                    raise InternalError(
                        f"model '{self.name}' returned {v.shape[:1]} rows in output '{k}' for a batch of {rows}"
                    )
            start = 0
            for r in batch:
                if not r.future.done():
                    r.future.set_result(
                        {k: v[start : start + r.rows] for k, v in outputs.items()} if len(batch) > 1 else outputs
                    )
                start += r.rows
            t3 = time.perf_counter()
            report.compute_input_s, report.compute_infer_s, report.compute_output_s = t1 - t0, t2 - t1, t3 - t2
            report.ok = True
        except Exception as e:  # exceptions reach every waiting future of this batch, and only those
            err = (
                e
                if isinstance(e, ServingError)
                else InternalError(f"model '{self.name}' failed to run: {type(e).__name__}: {e}")
            )
            if not isinstance(e, ServingError):
                log.error("model %s: batch of %d rows failed", self.name, rows, exc_info=e)
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(err)
            report.compute_infer_s = time.perf_counter() - t0
        finally:
            self._observer.on_batch(report)
        return model_s

"""onnxruntime sessions on threads of the server process (`instance_isolation: thread`, the default).

`InstanceThreads` turns any blocking `fn(inputs, instance) -> outputs` into the batcher's
`run_batch`: one thread per instance (a SimpleQueue in, `call_soon_threadsafe` out), and a lone batch
of a model whose call is known to take under `inline_max_run_s` runs on the event loop itself, where
it costs less than the hand-off (two thread wake-ups). `ThreadRuntime` is the onnxruntime model on it.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from server.errors import RepositoryError
from server.repository import ModelConfig
from server.runtime.base import RuntimeBase, SessionDescription, warmup_batch

Outputs = dict[str, np.ndarray]

# A model call expected to take less than this runs on the event loop itself when its request is the only
# one in the batcher: the hop to an instance thread and back then costs several times the call. With company
# waiting, batches always go to the instance threads, so compute overlaps the loop's protocol work. The
# estimate is a decaying minimum of measured calls.
INLINE_MAX_RUN_S = 100e-6


def _settle(fut: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if fut.cancelled():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class InstanceThreads:
    """`instances` threads that run a blocking `fn(inputs, instance)` for the event loop.

    About half the CPU of `loop.run_in_executor` per call (no concurrent.futures.Future, no wrap_future
    chain), which matters when a batch of a tiny model takes tens of microseconds."""

    def __init__(
        self,
        fn: Callable[[Outputs, int], Outputs],
        instances: int,
        name: str = "model",
        inline_max_run_s: float = INLINE_MAX_RUN_S,
    ) -> None:
        if not isinstance(instances, int) or instances < 1:
            raise ValueError(f"instances must be a positive integer, got {instances!r}")
        if not inline_max_run_s >= 0:
            raise ValueError(f"inline_max_run_s must be >= 0, got {inline_max_run_s!r}")
        self._fn = fn
        self.instances = instances
        self.inline_max_run_s = float(inline_max_run_s)  # 0: never run on the loop
        self.inline_runs = 0  # executions that ran on the event loop (for tests and statistics)
        self._run_s = float("inf")  # estimated cost of one call, seconds (unknown: inf); see _timed
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"ort-{name}_{i}", daemon=True) for i in range(instances)
        ]
        for t in self._threads:
            t.start()

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            loop, fut, inputs, instance = item
            try:
                result, exc = self._timed(inputs, instance), None
            except BaseException as e:  # handed to the awaiting coroutine
                result, exc = None, e
            try:
                loop.call_soon_threadsafe(_settle, fut, result, exc)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _timed(self, inputs: Outputs, instance: int) -> tuple[Outputs, float]:
        t = time.perf_counter()
        outputs = self._fn(inputs, instance)
        dt = time.perf_counter() - t
        # A decaying minimum: drops at once to a faster call, climbs 10 % of the way to a slower one. Calls on a
        # freshly woken thread run several times slower than the model's own cost (cold caches, a migrated
        # thread), so a plain average would overstate a tiny model; a truly slow one still climbs above the
        # limit within a few calls.
        self._run_s = dt if dt < self._run_s else self._run_s + 0.1 * (dt - self._run_s)
        return outputs, dt

    def run_batch(self, inputs: Outputs, instance: int, alone: bool) -> asyncio.Future:
        """The Runtime method: a future of (outputs, seconds the call took)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if alone and self._run_s <= self.inline_max_run_s:
            self.inline_runs += 1
            try:
                fut.set_result(self._timed(inputs, instance))  # alone and tiny: cheaper than two thread wake-ups
            except Exception as e:
                fut.set_exception(e)
        else:
            self._queue.put((loop, fut, inputs, instance))
        return fut

    def close(self) -> None:
        """Blocking: let every thread finish its call and exit."""
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()


@dataclass(frozen=True)
class MemorySettings:
    """The model config's onnxruntime memory keys (server/repository.py ModelConfig)."""

    cpu_arena: bool = True
    arena_extend_strategy: str = "next_power_of_two"
    memory_pattern: bool = False

    @classmethod
    def of(cls, config: ModelConfig) -> MemorySettings:
        return cls(config.cpu_arena, config.arena_extend_strategy, config.memory_pattern)


_env_arena_lock = threading.Lock()
_env_arena_registered = False


def _register_env_arena() -> None:
    """kSameAsRequested: the Python API has no per-session CPU arena config, so it takes an environment arena
    (OrtArenaCfg, strategy 1), registered once per process and shared by every session that asks for it."""
    global _env_arena_registered
    with _env_arena_lock:
        if not _env_arena_registered:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
            _env_arena_registered = True


def session_options(
    intra_op_threads: int, inter_op_threads: int, memory: MemorySettings = MemorySettings()
) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = inter_op_threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning worker threads burn the cores that the protocol front needs (measured: bench/).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.enable_cpu_mem_arena = memory.cpu_arena
    opts.enable_mem_pattern = memory.memory_pattern
    if memory.cpu_arena and memory.arena_extend_strategy == "same_as_requested":
        _register_env_arena()
        opts.add_session_config_entry("session.use_env_allocators", "1")
    return opts


def open_sessions(
    path: Path,
    intra_op_threads: int,
    inter_op_threads: int,
    providers: list[str],
    count: int,
    memory: MemorySettings = MemorySettings(),
) -> list[ort.InferenceSession]:
    opts = session_options(intra_op_threads, inter_op_threads, memory)
    try:
        return [ort.InferenceSession(str(path), sess_options=opts, providers=providers) for _ in range(count)]
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... classes
        raise RepositoryError(f"{path}: onnxruntime cannot load the model: {str(e).strip()[:500]}") from None


class ThreadRuntime(RuntimeBase):
    """`instances` onnxruntime sessions of one model version in this process, warmed up and ready."""

    isolation = "thread"

    def __init__(self, path: str | Path, config: ModelConfig, version: int) -> None:
        super().__init__(path, config, version)
        self.sessions = open_sessions(
            self.path,
            config.intra_op_threads,
            config.inter_op_threads,
            self.providers,
            config.instances,
            MemorySettings.of(config),
        )
        self._describe(SessionDescription.of(self.sessions[0]))
        self._output_names = [o.name for o in self.outputs]
        self.warmup_s = self._warm_up()
        self._threads = InstanceThreads(self.run, config.instances, config.name)

    def run_batch(self, inputs: Outputs, instance: int, alone: bool) -> asyncio.Future:
        """The Runtime method (see InstanceThreads.run_batch)."""
        return self._threads.run_batch(inputs, instance, alone)

    def run(self, inputs: Outputs, instance: int = 0) -> Outputs:
        """Blocking: run one batch on session `instance` (the instance threads call this)."""
        return dict(zip(self._output_names, self.sessions[instance].run(self._output_names, inputs)))

    def _warm_up(self) -> float:
        """Run each configured warm-up batch size on every session; returns seconds spent."""
        t0 = time.perf_counter()
        spec = self.input
        for b in self.config.warmup_batch_sizes:
            x = warmup_batch(b, spec.shape, spec.dtype)
            for i in range(len(self.sessions)):
                self.run({spec.name: x}, i)
        return time.perf_counter() - t0

    @property
    def inline_runs(self) -> int:
        return self._threads.inline_runs

    def close(self) -> None:
        """Blocking: stop the instance threads and release the sessions (the batcher has drained)."""
        self._threads.close()
        self.sessions = []

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

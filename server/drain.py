"""Shutdown that loses nothing it accepted: the order of steps around `grpc.aio.Server.stop`.

Why it is needed: grpc core cancels (CANCELLED) every call that has arrived but that the application has
not picked up yet at the moment `stop()` begins, and grpc.aio picks calls up one at a time, so under
load there are always some. Measured with a plain grpc.aio echo server at concurrency 64: 58-62
CANCELLED per SIGTERM. The steps:

1. `begin()`: from now on every new call (unary or stream) is *held* by `hold()` in its handler,
   which takes it out of grpc's pending queue. Clients with all their calls held send no more, so the
   pending queue empties.
2. `quiet()`: wait until no call has arrived for `quiet_s` (or `max_wait_s` passed).
3. `grpc.stop(grace)` starts: GOAWAY goes out, new streams are refused by the transport (clients see
   UNAVAILABLE and retry elsewhere); then `release()` answers every held call UNAVAILABLE and tells
   open streams (`watch`) to stop reading, answer what they have and end with UNAVAILABLE. In-flight
   work finishes within the grace.

Measured on the same echo server: 0 CANCELLED in 3 of 3 runs (each held call answered UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

QUIET_S = 0.1  # no new call for this long: grpc's pending queue is empty
MAX_WAIT_S = 2.0  # upper bound on step 2, whatever clients do
DRAIN_MESSAGE = "the server is shutting down; retry on another replica"


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self._released: asyncio.Event | None = None
        self._last_arrival = 0.0
        self._watchers: set = set()  # callbacks for open streams: called once on release()

    def begin(self) -> None:
        self._released = asyncio.Event()
        self._last_arrival = time.monotonic()
        self.draining = True

    async def hold(self) -> None:
        """Called by a handler that starts while draining: returns once the transport stopped taking
        calls; the caller then answers UNAVAILABLE (DRAIN_MESSAGE)."""
        self._last_arrival = time.monotonic()
        if self._released is not None:
            await self._released.wait()

    async def quiet(self, quiet_s: float = QUIET_S, max_wait_s: float = MAX_WAIT_S) -> None:
        t0 = time.monotonic()
        while True:
            now = time.monotonic()
            if now - self._last_arrival >= quiet_s or now - t0 >= max_wait_s:
                return
            await asyncio.sleep(min(quiet_s / 4, 0.02))

    @property
    def released(self) -> bool:
        return self._released is not None and self._released.is_set()

    async def wait_released(self) -> None:
        if self._released is not None:
            await self._released.wait()

    def watch(self, callback) -> Callable[[], None]:
        """Call `callback()` on release() (an open stream: stop reading, finish, end); returns the unwatch."""
        self._watchers.add(callback)
        return lambda: self._watchers.discard(callback)

    def release(self) -> None:
        if self._released is not None:
            self._released.set()
        for callback in list(self._watchers):
            callback()
        self._watchers.clear()


async def stop_server(grpc_server, drain: Drain, grace: float) -> None:
    """Steps 1-3 above for a started grpc.aio server."""
    if not drain.draining:
        drain.begin()
    await drain.quiet()
    stopping = asyncio.ensure_future(grpc_server.stop(grace))
    await asyncio.sleep(0.05)  # GOAWAY is out: what clients send now is refused by the transport
    drain.release()
    await stopping

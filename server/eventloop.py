"""Which asyncio event loop runs the server: the standard library's, or uvloop (libuv).

Kept apart from server/app.py so that light processes (the benchmark's echo server) can use it without
importing onnxruntime.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

EVENT_LOOPS = ("uvloop", "asyncio")


def run_loop(coro: Coroutine[Any, Any, Any], event_loop: str = "asyncio") -> Any:
    """asyncio.run(coro) on the named event loop implementation."""
    if event_loop not in EVENT_LOOPS:
        raise ValueError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}, got {event_loop!r}")
    if event_loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)

"""In-process fixtures for the core tests: a real repository of small ONNX models, a real registry and
service on real onnxruntime, driven by asyncio directly (no subprocess, no socket)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from server.core.registry import ModelRegistry
from server.core.service import InferenceService
from server.metrics import Metrics


@asynccontextmanager
async def core_service(repo: Path, metrics: Metrics | None = None, **kw) -> AsyncIterator[InferenceService]:
    """A started InferenceService over `repo` (polling off); closed on exit."""
    metrics = metrics or Metrics(max_batch_size=64)
    service = InferenceService(ModelRegistry(repo, metrics, poll_interval_s=0), metrics, **kw)
    await service.start()
    try:
        yield service
    finally:
        service.drain()
        await service.close()


def run(coro):
    return asyncio.run(coro)

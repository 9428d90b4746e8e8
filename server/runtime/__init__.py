"""Model runtimes: where a batch is computed. `base.Runtime` is the one interface the batcher awaits;
`threads.ThreadRuntime` (sessions on threads of this process) and `process.ProcessRuntime` (a child
process per instance) implement it. `open_runtime` picks one by the config's `instance_isolation`."""

from __future__ import annotations

from pathlib import Path

from server.repository import ModelConfig
from server.runtime.base import Runtime


def open_runtime(path: str | Path, config: ModelConfig, version: int) -> Runtime:
    """Blocking (run it off the event loop): load, check and warm one model version."""
    if config.instance_isolation == "process":
        from server.runtime.process import ProcessRuntime

        return ProcessRuntime(path, config, version)
    from server.runtime.threads import ThreadRuntime

    return ThreadRuntime(path, config, version)

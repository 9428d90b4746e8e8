"""Background callers for load tests: N daemon threads running `_run` until the `with` block ends."""

from __future__ import annotations

import threading


class CallerThreads:
    """Subclasses implement `_run` (loop while not `self.stop.is_set()`, record under `self.lock`)."""

    join_timeout_s = 60.0

    def __init__(self, threads: int) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(self.join_timeout_s)

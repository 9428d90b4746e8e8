"""Rate-limited logging for what clients can cause at any rate (refusals, expired deadlines).

`RateLimitedLog(logger, per_interval=5, interval_s=10)`: per key (e.g. (rpc, status code)), the first
`per_interval` lines of each interval are logged as they come; the rest are counted, and the next line
for that key after the interval says how many were suppressed. A flood of bad requests therefore costs
a few log lines per key per interval, never one per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable


class RateLimitedLog:
    def __init__(
        self, logger: logging.Logger, per_interval: int = 5, interval_s: float = 10.0, max_keys: int = 1024
    ) -> None:
        self.logger = logger
        self.per_interval = per_interval
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._state: dict[Hashable, list] = {}  # key -> [interval start, logged, suppressed]
        self._lock = threading.Lock()

    def log(self, level: int, key: Hashable, msg: str, *args) -> bool:
        """Log `msg % args` at `level` unless `key` is over its budget; True if it was logged."""
        if not self.logger.isEnabledFor(level):
            return False
        now = time.monotonic()
        with self._lock:
            st = self._state.get(key)
            if st is None:
                if len(self._state) >= self.max_keys:  # keys come from a bounded set; this is a backstop
                    self._state.clear()
                st = self._state[key] = [now, 0, 0]
            suppressed = 0
            if now - st[0] >= self.interval_s:
                suppressed, st[0], st[1], st[2] = st[2], now, 0, 0
            if st[1] >= self.per_interval:
                st[2] += 1
                return False
            st[1] += 1
        if suppressed:
            msg += f" (and {suppressed} more like it in the previous {self.interval_s:g} s, not logged)"
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: Hashable, msg: str, *args) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

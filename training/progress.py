"""Progress of long work (a training epoch, export verification, INT8 calibration): a tqdm bar when the
stream is a terminal, plain lines when it is not (a log file, a pipe, CI), nothing when switched off.

    with Progress(total=430, desc="epoch 3/15", unit="batch") as p:
        for ...:
            p.update(1, loss=0.123)          # postfix values are shown on the bar / in the lines

``CNN_PROGRESS`` chooses the mode: ``auto`` (the default: bar if the stream is a TTY, else lines),
``bar``, ``lines`` or ``off``. Plain lines come at every quarter of a known total (``plain_every``) or,
when the total is unknown, at most every ``plain_interval_s`` seconds, so a log gets a handful of lines
per task rather than one per step. Progress goes to stderr by default, beside the result lines that
commands print to stdout.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")
MODES = ("auto", "bar", "lines", "off")


def progress_mode(stream: IO[str] | None = None) -> str:
    """ "bar", "lines" or "off" for ``stream`` (default stderr), from ``CNN_PROGRESS`` and whether it is a TTY."""
    mode = os.environ.get("CNN_PROGRESS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"CNN_PROGRESS must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    stream = stream if stream is not None else sys.stderr
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # closed or not a real file
        return "lines"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    """A progress display for ``total`` steps (None: unknown). See the module docstring."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        *,
        stream: IO[str] | None = None,
        mode: str | None = None,
        leave: bool = False,
        plain_every: float = 0.25,
        plain_final: bool = True,
        plain_interval_s: float = 10.0,
        unit_scale: int = 1,
        rate_unit: str = "",
    ):
        self.stream = stream if stream is not None else sys.stderr
        self.mode = mode or progress_mode(self.stream)
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.plain_every, self.plain_final, self.plain_interval_s = plain_every, plain_final, plain_interval_s
        self.unit_scale, self.rate_unit = unit_scale, rate_unit  # lines: rate of n * unit_scale rate_units
        self._t0 = self._last = time.perf_counter()
        self._next_mark = plain_every
        self._bar = None
        self._closed = False
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                file=self.stream,
                leave=leave,
                dynamic_ncols=True,
                mininterval=0.25,
                smoothing=0.1,
            )

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        if postfix:
            self.postfix.update(postfix)
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in self.postfix.items()}, refresh=False)
            self._bar.update(n)
        elif self.mode == "lines":
            self._maybe_line()

    def _maybe_line(self) -> None:
        now = time.perf_counter()
        if self.total:
            frac = self.n / self.total
            if frac < self._next_mark or (frac >= 1.0 and not self.plain_final):
                return
            while self._next_mark <= frac:
                self._next_mark += self.plain_every
        elif now - self._last < self.plain_interval_s:
            return
        self._last = now
        self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self._t0
        done = (
            f"{100 * self.n / self.total:3.0f}% ({self.n:,}/{self.total:,} {self.unit})"
            if self.total
            else f"{self.n:,} {self.unit}"
        )
        rate = (
            f", {self.n * self.unit_scale / elapsed:,.0f} {self.rate_unit}/s" if elapsed > 0 and self.rate_unit else ""
        )
        post = "".join(f", {k} {_fmt(v)}" for k, v in self.postfix.items())
        print(f"{self.desc}: {done}, {elapsed:.1f}s{rate}{post}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines" and not self.total and self.plain_final and self.n:
            self._line(time.perf_counter())  # unknown total: one closing line with the count

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", **kw: Any) -> Iterator[T]:
    """Iterate ``items`` with a Progress (total from ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit, **kw) as p:
        for item in items:
            yield item
            p.update(1)

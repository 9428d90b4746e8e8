"""The search for scenario 7's maximum sustainable rate (bench/tail.py, `search_max_rate`), on a system
whose answer is known: a rate holds a probe of d seconds when it is at most capacity(d). A real server's
saturation edge behaves this way (a short probe ends while its queue is still filling), which is why the
search confirms its result over a probe as long as the windows measured at fractions of it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.tail import CONFIRM_BACKOFF, TAIL_MODES, search_max_rate


class Edge:
    """Sustainable iff rate <= capacity(duration); records every probe."""

    def __init__(self, short_cap: float, long_cap: float, long_s: float) -> None:
        self.short_cap, self.long_cap, self.long_s = short_cap, long_cap, long_s
        self.calls: list[tuple[float, float, str]] = []

    def __call__(self, rate: float, duration_s: float, phase: str) -> bool:
        self.calls.append((rate, duration_s, phase))
        return rate <= (self.long_cap if duration_s >= self.long_s else self.short_cap)


def test_a_rate_that_holds_only_a_short_probe_is_lowered_until_a_long_one_holds():
    tm = TAIL_MODES["full"]
    edge = Edge(short_cap=4300, long_cap=3700, long_s=tm.confirm_s)
    rate, confirmed = search_max_rate(edge, tm, log=lambda *_: None)
    search = [c for c in edge.calls if c[2] == "search"]
    confirm = [c for c in edge.calls if c[2] == "confirm"]
    assert all(d == tm.probe_s for _, d, _ in search) and all(d == tm.confirm_s for _, d, _ in confirm)
    found = max(r for r, _, _ in search if r <= 4300)  # what the short probes alone would report
    assert 4300 - found < 4300 / 2**tm.bisect_steps
    assert confirmed and rate <= 3700 and rate == confirm[-1][0]
    assert [r for r, _, _ in confirm] == pytest.approx([found * CONFIRM_BACKOFF**i for i in range(len(confirm))])
    assert rate > 3700 * CONFIRM_BACKOFF  # lowered no further than needed


def test_a_rate_that_holds_the_long_probe_is_kept():
    tm = TAIL_MODES["full"]
    edge = Edge(short_cap=2500, long_cap=2500, long_s=tm.confirm_s)
    rate, confirmed = search_max_rate(edge, tm, log=lambda *_: None)
    assert confirmed and 2500 - rate < 2500 / 2**tm.bisect_steps
    assert [c[2] for c in edge.calls].count("confirm") == 1


def test_no_confirmation_is_reported_as_such():
    tm = TAIL_MODES["full"]
    edge = Edge(short_cap=4000, long_cap=100, long_s=tm.confirm_s)  # far below: every confirmation fails
    said: list[str] = []
    rate, confirmed = search_max_rate(edge, tm, log=said.append)
    assert not confirmed and [c[2] for c in edge.calls].count("confirm") == tm.confirm_steps
    assert rate == edge.calls[-1][0] and "unconfirmed" in said[-1]
    off = replace(tm, confirm_s=0.0)  # without the check (smoke mode): the short probes' answer, unconfirmed
    edge = Edge(short_cap=4000, long_cap=100, long_s=tm.confirm_s)
    rate, confirmed = search_max_rate(edge, off, log=said.append)
    assert not confirmed and 3800 < rate <= 4000 and all(c[2] == "search" for c in edge.calls)


def test_even_the_first_probe_failing_halves_down_and_zero_when_nothing_holds():
    tm = TAIL_MODES["full"]
    edge = Edge(short_cap=30, long_cap=30, long_s=tm.confirm_s)
    rate, confirmed = search_max_rate(edge, tm, log=lambda *_: None)
    assert confirmed and 25 <= rate <= 30
    edge = Edge(short_cap=0.001, long_cap=0.001, long_s=tm.confirm_s)
    assert search_max_rate(edge, tm, log=lambda *_: None) == (0.0, False)

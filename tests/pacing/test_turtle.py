"""Turtle accuracy: 300/min with a burst, measured per 60-s window over 10 virtual minutes."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from mailpacer.pacing import Gcra, Limit, Pacer, parse_limit, parse_pacing

from .helpers import gcra_conforms


def windows_of_60s(times: list[float], minutes: int) -> list[int]:
    return [sum(1 for t in times if 60 * k <= t < 60 * (k + 1)) for k in range(minutes)]


async def test_turtle_300_per_minute_holds_every_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(parse_pacing({"campaign": {"rate": "300/min", "burst": 5}}))
    times: list[float] = []
    start = trio.current_time()

    async def dispatcher() -> None:  # like the engine: asks for a pipeline's worth
        while trio.current_time() - start < 600:
            granted = await pacer.acquire("turtle", want=10)
            assert 1 <= granted <= 5  # never more than the burst at once
            times.extend([trio.current_time() - start] * granted)

    async with trio.open_nursery() as nursery:
        for _ in range(3):  # several tasks asking at once must not add up
            nursery.start_soon(dispatcher)
    counts = windows_of_60s(times, 10)
    assert all(abs(c - 300) <= 3 for c in counts[1:]), counts
    assert counts[0] <= 300 + 5
    same_instant = max(len(list(g)) for _, g in itertools.groupby(times))
    assert same_instant <= 5
    assert gcra_conforms(times, 0.2, 5)


async def test_a_burst_larger_than_configured_would_be_caught(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # the checker itself: a limiter with burst 20 breaks a burst-5 promise
    limit = Limit("c", parse_limit({"rate": "300/min", "burst": 20}))
    times: list[float] = []
    while len(times) < 200:
        n = await limit.acquire(20)
        times.extend([trio.current_time()] * n)
    assert not gcra_conforms(times, 0.2, 5)
    assert gcra_conforms(times, 0.2, 20)


def test_gcra_refund_and_rate_change() -> None:
    gcra = Gcra(1.0, burst=2)
    assert gcra.available(0.0, 5) == 2
    gcra.consume(0.0, 2)
    assert gcra.available(0.0, 1) == 0
    assert gcra.ready_at(0.0) == pytest.approx(1.0)
    gcra.refund(0.0, 1)
    assert gcra.available(0.0, 5) == 1
    gcra.consume(0.0, 1)
    gcra.set_interval(0.0, 2.0)  # half the rate: the debt doubles, the tolerance too
    assert gcra.ready_at(0.0) == pytest.approx(2.0)
    assert gcra.available(2.0, 5) == 1
    gcra.refund(100.0, 50)  # never more credit than an idle limiter
    assert gcra.available(100.0, 5) == 2


async def test_a_long_turtle_drifts_by_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limit = Limit("c", parse_limit({"rate": "300/min"}))
    start = trio.current_time()
    for _ in range(3_001):
        assert await limit.acquire(5) == 1
    # 10 min at 5/s: message 3,001 goes at exactly 600 s (float sums do not drift)
    assert trio.current_time() - start == pytest.approx(600.0, abs=1e-6)
    assert limit.waited == pytest.approx(600.0, abs=1e-6)

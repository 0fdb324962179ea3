"""The scheduler's time rules on Trio's MockClock (autojump): floor, tiers, in-flight cap,
backoff with full jitter, Retry-After, circuit breaker, exactly-once across outages."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
import trio
import trio.testing

from mailpacer.report import Attempt, Breaker, ReportConfig, ReportScheduler

from .fakes import SECRET, Campaigns, FakeServer, MemoryOutbox, within


def config(**overrides: Any) -> ReportConfig:
    return ReportConfig(url="http://main.example/v1/progress", secret=SECRET, **overrides)


def scheduler_for(
    outbox: MemoryOutbox, server: FakeServer, campaigns: Campaigns | None = None, **cfg: Any
) -> ReportScheduler:
    return ReportScheduler(
        config(**cfg), outbox, server.post, campaigns or Campaigns(), rng=random.Random(7)
    )


async def drain(outbox: MemoryOutbox, limit: float = 7200) -> None:
    with trio.fail_after(limit):
        while outbox.undelivered:
            await trio.sleep(1)


@pytest.mark.parametrize("detail", ["failures", "all"])
async def test_ten_minutes_at_5000_per_minute_make_at_most_41_requests(
    autojump_clock: trio.testing.MockClock, detail: str
) -> None:
    outbox, server, campaigns = MemoryOutbox(), FakeServer(), Campaigns()
    scheduler = scheduler_for(outbox, server, campaigns, detail=detail)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        t0 = trio.current_time()
        await campaigns.run(outbox, scheduler, "blast", per_minute=5000, seconds=600)
        if detail == "failures":
            await drain(outbox)
        else:
            await trio.sleep(1)
        nursery.cancel_scope.cancel()
    during = [s for s in server.starts() if s <= t0 + 600]
    assert outbox.next_seq - 1 >= 50_000  # started + ~50,000 outcomes + finished
    assert len(during) <= 41
    assert within(server.gaps(), 15.0)
    if detail == "failures":
        # speed > 120/min: one request per 30 s (+ the started event at t0) ...
        assert len(during) == 21
        # ... each with the counters of the active campaign and every non-success event
        assert server.requests[5].document["campaigns"][0]["name"] == "blast"
        assert server.stored == {
            seq: kind for seq, kind in outbox.types.items() if kind != "recipient.sent"
        }
        assert server.duplicates == 0
        assert len(server.stored) > 500
        assert set(server.stored.values()) == {
            "campaign.started", "recipient.failed", "campaign.finished"
        }  # fmt: skip
    else:
        # a backlog larger than one batch goes at the 15-s floor
        assert len(during) == 41
        assert scheduler.backlog.events > 40_000  # visible as the backlog metric


async def test_300_per_minute_reports_every_30_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox, server, campaigns = MemoryOutbox(), FakeServer(), Campaigns()
    scheduler = scheduler_for(outbox, server, campaigns)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        t0 = trio.current_time()
        await campaigns.run(outbox, scheduler, "turtle", per_minute=300, seconds=300)
        await drain(outbox)
        nursery.cancel_scope.cancel()
    starts = server.starts()
    assert starts[0] == t0  # 'campaign.started' at once
    steady = [b - a for a, b in itertools.pairwise(starts) if b <= t0 + 299]
    assert steady
    assert all(g == pytest.approx(30.0) for g in steady)
    assert 15.0 <= starts[-1] - starts[-2] <= 30.0  # 'finished' at the next allowed moment
    assert len(starts) == 11  # t0, +30 .. +270, and the finish at +300


@pytest.mark.parametrize(
    ("per_minute", "interval"), [(10, 120.0), (20, 120.0), (21, 90.0), (60, 90.0), (90, 45.0)]
)
async def test_speed_tiers(
    autojump_clock: trio.testing.MockClock, per_minute: float, interval: float
) -> None:
    outbox, server, campaigns = MemoryOutbox(), FakeServer(), Campaigns()
    scheduler = scheduler_for(outbox, server, campaigns)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        # a slow campaign alongside: the fastest decides
        nursery.start_soon(lambda: campaigns.run(outbox, None, "slow", per_minute=5, seconds=1200))
        await campaigns.run(outbox, scheduler, "main", per_minute=per_minute, seconds=900)
        nursery.cancel_scope.cancel()
    steady = server.gaps()[1:-1]
    assert steady
    assert all(g == pytest.approx(interval) for g in steady), steady


async def test_lifecycle_storm_never_beats_the_15_second_floor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox, server = MemoryOutbox(), FakeServer()
    scheduler = scheduler_for(outbox, server)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        for i in range(300):  # a lifecycle event every second for 5 minutes
            outbox.add("campaign.paused" if i % 2 else "campaign.started", f"c{i}")
            scheduler.notify(urgent=True)
            await trio.sleep(1)
        await drain(outbox)
        nursery.cancel_scope.cancel()
    assert within(server.gaps(), 15.0)
    assert len([s for s in server.starts() if s < 300]) <= 300 // 15 + 1
    assert sorted(server.stored) == list(range(1, 301))


async def test_never_more_than_two_in_flight_against_a_slow_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox, server = MemoryOutbox(), FakeServer(latency=40.0)
    for _ in range(3000):
        outbox.add("recipient.failed", code=550)
    scheduler = scheduler_for(outbox, server)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        await drain(outbox)
        nursery.cancel_scope.cancel()
    assert server.max_in_flight == 2 == scheduler.max_in_flight_seen
    assert within(server.gaps(), 15.0)
    assert len(server.requests) == 30  # 100 events each, disjoint ranges
    assert sorted(server.stored) == list(range(1, 3001))
    assert server.duplicates == 0
    ranges = sorted((r.document["sequence"]["first"], r.document["sequence"]["last"])
                    for r in server.requests)  # fmt: skip
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges))


async def test_backoff_breaker_and_half_open_probe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outage_until = 1800.0  # 30 minutes of HTTP 500, then fine
    server = FakeServer(
        latency=0.5,
        behaviour=lambda now: (
            Attempt(False, 500, reason="HTTP 500") if now < outage_until else Attempt(True, 200)
        ),
    )
    outbox = MemoryOutbox()
    for _ in range(250):
        outbox.add("recipient.failed", code=550)
    scheduler = scheduler_for(outbox, server)
    states: list[tuple[float, Breaker]] = []

    async def watch() -> None:
        while True:
            states.append((trio.current_time(), scheduler.breaker))
            await trio.sleep(0.5)

    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        nursery.start_soon(watch)
        await drain(outbox)
        nursery.cancel_scope.cancel()

    failed = [r for r in server.requests if not r.attempt.ok]
    # the first five failures are spaced by the floor / backoff, the sixth waits >= 60 s
    assert within([b.start - a.end for a, b in itertools.pairwise(failed[:5])], 14.5)
    assert failed[5].start - failed[4].end >= 60.0
    assert any(s is Breaker.OPEN for _, s in states)
    assert any(s is Breaker.HALF_OPEN for _, s in states)
    # after the breaker opened, every request is a lone probe, at least 60 s after the last
    later = failed[4:] + [r for r in server.requests if r.attempt.ok][:1]
    gaps = [b.start - a.end for a, b in itertools.pairwise(later)]
    assert within(gaps, 60.0, 600.0 + 1)  # full jitter under the 10-minute cap
    assert len({round(g) for g in gaps}) > 3  # jittered, not lock-step
    assert max(gaps) > 120  # and growing beyond the breaker's minute
    assert server.max_in_flight == 1
    assert scheduler.breaker is Breaker.CLOSED
    assert scheduler.consecutive_failures == 0
    assert sorted(server.stored) == list(range(1, 251))
    assert scheduler.last_error is None
    assert scheduler.last_success is not None


async def test_retry_after_is_honoured(autojump_clock: trio.testing.MockClock) -> None:
    answers = iter([Attempt(False, 429, retry_after=200.0, reason="HTTP 429")])
    server = FakeServer(behaviour=lambda now: next(answers, Attempt(True, 200)))
    outbox = MemoryOutbox()
    outbox.add("campaign.started")
    scheduler = scheduler_for(outbox, server)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        await drain(outbox)
        nursery.cancel_scope.cancel()
    first, second = server.requests
    assert second.start - first.end >= 200.0
    assert scheduler.breaker is Breaker.CLOSED


async def test_three_outages_and_a_restart_lose_nothing_and_duplicate_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Outage 1: HTTP 500s. Outage 2: the server stores the events but the answer is lost
    (timeout). Outage 3: 503 with Retry-After. Then the agent restarts with requests in
    flight. The server ends with every event once, in sequence."""
    stored_but_lost = 0

    def behaviour(now: float) -> Attempt:
        nonlocal stored_but_lost
        if 60 <= now < 240:
            return Attempt(False, 500, reason="HTTP 500")
        if 360 <= now < 600:
            stored_but_lost += 1
            return Attempt(False, reason="timeout (ReadTimeout)")
        if 700 <= now < 900:
            return Attempt(False, 503, retry_after=120.0, reason="HTTP 503")
        return Attempt(True, 200)

    outbox, campaigns = MemoryOutbox(), Campaigns()
    server = FakeServer(latency=5.0, behaviour=behaviour)
    real_post = server.post

    async def post(document: Any) -> Attempt:
        attempt = await real_post(document)
        if attempt.reason.startswith("timeout"):  # it was stored, then the answer was lost
            for event in document["events"]:
                server.stored[event["seq"]] = event["type"]
        return attempt

    def start_agent() -> ReportScheduler:
        return ReportScheduler(config(detail="all"), outbox, post, campaigns, rng=random.Random(3))

    restarted_with_in_flight = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: campaigns.run(outbox, None, "drip", per_minute=600, seconds=1000)
        )
        async with trio.open_nursery() as agent:  # the first agent process
            first: ReportScheduler = await agent.start(start_agent().run)
            await trio.sleep(1000)
            while not first.in_flight:
                await trio.sleep(0.5)
            await trio.sleep(1)
            restarted_with_in_flight = first.in_flight
            agent.cancel_scope.cancel()  # killed with a request on the wire
        second: ReportScheduler = await nursery.start(start_agent().run)  # same outbox
        await drain(outbox)
        nursery.cancel_scope.cancel()
    assert restarted_with_in_flight > 0
    assert second.requests > 0
    assert stored_but_lost > 0
    reasons = {r.attempt.reason for r in server.requests if not r.attempt.ok}
    assert {"HTTP 500", "timeout (ReadTimeout)", "HTTP 503"} <= reasons
    assert sorted(server.stored) == list(range(1, outbox.next_seq))
    assert not outbox.undelivered

"""The agent's ledger polling, on Trio's MockClock against a real SQLite ledger.

The old worker polled every 5 s (12 queries a minute). The agent must poll at most 4 times a
minute, 15-20 s apart when idle, and pick up a newly queued campaign within one interval.
"""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from mailpacer.ledger.store import Campaign, Ledger
from mailpacer.service.poller import LedgerPoller


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    db = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    db.upgrade()
    return db


def _counted(ledger: Ledger, times: list[float]) -> LedgerPoller[list[Campaign]]:
    async def query() -> list[Campaign]:
        # The real query, called inline: a worker thread would let the autojump clock leap
        # ahead while it runs (the agent itself uses AsyncLedger).
        times.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        return ledger.runnable_campaigns(time.time())

    found: list[list[Campaign]] = []
    poller = LedgerPoller(query, found.append, rng=random.Random(7))
    poller.found = found  # type: ignore[attr-defined]
    return poller


def _per_minute(times: list[float], start: float, minutes: int) -> list[int]:
    return [
        sum(1 for t in times if start + 60 * m <= t < start + 60 * (m + 1)) for m in range(minutes)
    ]


async def test_idle_agent_polls_at_most_four_times_a_minute(
    ledger: Ledger, autojump_clock: trio.testing.MockClock
) -> None:
    times: list[float] = []
    poller = _counted(ledger, times)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(poller.run)
        await trio.sleep(600)  # ten idle minutes
        nursery.cancel_scope.cancel()
    per_minute = _per_minute(times, start, 10)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    print(
        f"polls per minute over 10 idle minutes: {per_minute}; "
        f"gaps {min(gaps):.1f}-{max(gaps):.1f} s"
    )
    assert max(per_minute) <= 4
    assert sum(per_minute) >= 30  # it does keep polling: 600 s / 20 s
    assert all(15.0 <= g <= 20.0 + 1e-6 for g in gaps)
    assert len({round(g, 3) for g in gaps}) > 5  # jittered: a fleet does not poll in step


async def test_wake_ups_never_break_the_floor(
    ledger: Ledger, autojump_clock: trio.testing.MockClock
) -> None:
    """Something asks for a poll every second (e.g. API calls): still 4 a minute at most."""
    times: list[float] = []
    poller = _counted(ledger, times)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(poller.run)
        for _ in range(300):
            poller.wake()
            await trio.sleep(1)
        nursery.cancel_scope.cancel()
    per_minute = _per_minute(times, start, 5)
    print(f"polls per minute with a wake-up every second: {per_minute}")
    assert max(per_minute) <= 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 15.0
    assert max(gaps) <= 16.0  # woken: at the floor, not after the idle interval


async def test_a_queued_campaign_is_found_within_one_interval(
    ledger: Ledger, autojump_clock: trio.testing.MockClock
) -> None:
    times: list[float] = []
    poller = _counted(ledger, times)
    found: list[list[Campaign]] = poller.found  # type: ignore[attr-defined]
    async with trio.open_nursery() as nursery:
        await nursery.start(poller.run)
        await trio.sleep(37)
        campaign = ledger.create_campaign(
            "queued", sender="n@example.com", template_dir="/t", settings={"mode": "agent"}
        )
        ledger.insert_recipients(
            campaign.id,
            [{"email": "a@example.org", "email_key": "a@example.org", "source_row": 2,
              "variables": "{}"}],
        )  # fmt: skip
        queued_at = trio.current_time()
        while not any(found_now for found_now in found):
            await trio.sleep(0.5)
        waited = trio.current_time() - queued_at
        nursery.cancel_scope.cancel()
    print(f"queued campaign found after {waited:.1f} s")
    assert waited <= 20.5
    assert [c.name for c in found[-1]] == ["queued"]


async def test_a_failing_database_is_polled_no_faster(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While the ledger is unreachable the poller neither crashes nor speeds up."""
    from sqlalchemy.exc import OperationalError

    times: list[float] = []

    async def query() -> list[Campaign]:
        times.append(trio.current_time())
        raise OperationalError("SELECT 1", {}, Exception("Can't connect to MySQL server"))

    poller = LedgerPoller(query, lambda found: None, rng=random.Random(3))
    async with trio.open_nursery() as nursery:
        await nursery.start(poller.run)
        await trio.sleep(300)
        nursery.cancel_scope.cancel()
    assert poller.failures == len(times) >= 15
    assert max(_per_minute(times, 0.0, 5)) <= 4

"""Levels evaluated together (all or none) and fair sharing between campaigns."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

from mailpacer.pacing import Limit, Pacer, acquire_together, parse_limit, parse_pacing


async def test_waiting_on_one_level_takes_nothing_from_another(
    autojump_clock: trio.testing.MockClock,
) -> None:
    campaign = Limit("campaign", parse_limit({"rate": "1/s"}))
    group = Limit("group", parse_limit({"rate": "1/s"}))
    group.pause(10)
    start = trio.current_time()
    taken_alone: list[float] = []

    async def other_path() -> None:  # uses only the campaign level meanwhile
        for _ in range(10):
            await campaign.acquire()
            taken_alone.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_path)
        assert await acquire_together((campaign, group)) == 1
        done = trio.current_time() - start
    # the joint request waited 10 s for the group, and while it waited the campaign level
    # gave its full 1/s to the other path: nothing was reserved or drained
    assert taken_alone == pytest.approx([float(i) for i in range(10)])
    assert done == pytest.approx(10.0)
    assert group.try_acquire() == 0  # the joint grant took from the group level too


async def test_a_campaign_waiting_on_one_group_still_sends_to_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(
        parse_pacing({"campaign": {"rate": "1/s"}, "groups": {"gmail": {"rate": "1/min"}}})
    )
    await pacer.acquire("c", group="gmail")
    start = trio.current_time()
    others: list[float] = []

    async def yahoo() -> None:
        for _ in range(30):
            await pacer.acquire("c", group="yahoo")
            others.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(yahoo)
        await trio.lowlevel.checkpoint()
        await pacer.acquire("c", group="gmail")
        gmail_at = trio.current_time() - start
    assert gmail_at == pytest.approx(60.0, abs=1.0)
    assert others == pytest.approx([float(i + 1) for i in range(30)])


async def test_a_cancelled_wait_takes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(parse_pacing({"global": {"rate": "1/min"}}))
    assert await pacer.acquire("a") == 1
    with trio.move_on_after(10):
        await pacer.acquire("a")
    assert pacer.granted("a") == 1
    assert pacer.waited("a") == pytest.approx(10.0)
    assert pacer.when("b") == pytest.approx(trio.current_time() + 50)
    # and a refund gives capacity back at once
    pacer.refund("a", 1)
    assert pacer.try_acquire("b") == 1


async def run_campaigns(
    pacer: Pacer, askers: dict[str, tuple[int, int]], seconds: float, *, delays: dict[str, float]
) -> dict[str, list[float]]:
    """Campaign -> (tasks, want); returns each campaign's grant times."""
    start = trio.current_time()
    times: dict[str, list[float]] = {name: [] for name in askers}

    async def asker(name: str, want: int) -> None:
        await trio.sleep(delays.get(name, 0.0))
        while trio.current_time() - start < seconds:
            n = await pacer.acquire(name, want=want)
            times[name].extend([trio.current_time() - start] * n)

    async with trio.open_nursery() as nursery:
        for name, (tasks, want) in askers.items():
            for _ in range(tasks):
                nursery.start_soon(asker, name, want)
    return {name: [t for t in ts if t < seconds] for name, ts in times.items()}


async def test_two_campaigns_share_the_global_limit_fairly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(parse_pacing({"global": {"rate": "60/min", "burst": 10}}))
    # "greedy" has four tasks asking for 10 at a time; "modest" one task asking for 1
    times = await run_campaigns(pacer, {"greedy": (4, 10), "modest": (1, 1)}, 600, delays={})
    greedy, modest = len(times["greedy"]), len(times["modest"])
    assert greedy + modest == pytest.approx(600 + 10, abs=2)
    assert abs(greedy - modest) <= 12, (greedy, modest)
    # and minute by minute, not only on average
    for minute in range(1, 10):
        in_minute = sum(1 for t in times["modest"] if 60 * minute <= t < 60 * (minute + 1))
        assert 28 <= in_minute <= 32


async def test_weights_and_work_conservation(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(parse_pacing({"global": {"rate": "60/min"}}))
    pacer.add_campaign("heavy", weight=2)
    pacer.add_campaign("slow", parse_limit({"rate": "6/min"}))
    times = await run_campaigns(
        pacer, {"heavy": (2, 5), "light": (2, 5), "slow": (1, 1)}, 600, delays={}
    )
    counts = {name: len(ts) for name, ts in times.items()}
    # slow is held by its own 6/min; what it cannot use is split 2:1
    assert counts["slow"] == pytest.approx(60, abs=1)
    assert counts["heavy"] == pytest.approx(2 * counts["light"], abs=4)
    assert sum(counts.values()) == pytest.approx(600, abs=2)


async def test_an_idle_campaign_banks_no_credit(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(parse_pacing({"global": {"rate": "60/min"}}))
    times = await run_campaigns(pacer, {"early": (1, 5), "late": (1, 5)}, 600, delays={"late": 300})
    early_first_half = sum(1 for t in times["early"] if t < 300)
    assert early_first_half == pytest.approx(300, abs=1)
    # from the late start on they share: the late one does not get five minutes' catch-up
    early_second = sum(1 for t in times["early"] if t >= 300)
    late = len(times["late"])
    assert abs(early_second - late) <= 2
    assert late == pytest.approx(150, abs=2)


async def test_try_acquire_does_not_jump_the_queue(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(parse_pacing({"global": {"rate": "1/s"}}))
    assert pacer.try_acquire("a") == 1
    got: list[str] = []

    async def waiter() -> None:
        await pacer.acquire("b")
        got.append("b")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(1.0)  # b's slot is due now; b is served before a's try
        assert pacer.try_acquire("a") == 0
    assert got == ["b"]

"""Send windows, calendar caps and warm-up ramps on a MockClock that spans days and DST."""

from __future__ import annotations

from datetime import date

import pytest
import trio
import trio.testing

from mailpacer.pacing import Limit, Pacer, SendWindows, TrioWallClock, parse_limit, parse_pacing
from mailpacer.pacing.calendar import period_bounds
from mailpacer.pacing.spec import parse_windows

from .helpers import BERLIN, UTC, at, local, per_local_day


def windows(value: object) -> SendWindows:
    return SendWindows(parse_windows(value), BERLIN)


def test_office_hours_follow_the_zone_across_dst() -> None:
    office = windows({"days": "mon-fri", "hours": "09:00-17:00"})
    friday = at(2024, 3, 29, 16, 59)  # CET, UTC+1
    assert office.is_open(friday)
    assert office.next_change(friday) == at(2024, 3, 29, 17)
    assert not office.is_open(at(2024, 3, 29, 17))
    # Monday after the spring change opens at 09:00 CEST = 07:00 UTC
    monday = office.next_open(at(2024, 3, 29, 17))
    assert monday == at(2024, 4, 1, 9)
    assert monday == at(2024, 4, 1, 7, zone=UTC)
    assert not office.is_open(at(2024, 3, 30, 12))  # Saturday


def test_a_window_across_midnight_is_shorter_on_the_spring_night() -> None:
    night = windows({"days": "sat", "hours": "23:00-04:00"})
    opens = at(2024, 3, 30, 23)
    assert not night.is_open(opens - 60)
    assert night.is_open(opens)
    closes = night.next_change(opens)
    assert closes == at(2024, 3, 31, 4)  # Sunday, already summer time
    assert closes - opens == 4 * 3600  # 02:00-03:00 does not exist
    autumn = at(2024, 10, 26, 23)
    assert night.next_change(autumn) - autumn == 6 * 3600  # 02:00-03:00 happens twice
    assert not night.is_open(at(2024, 3, 31, 12))  # not on Sunday daytime


def test_adjacent_windows_merge_and_split_days_work() -> None:
    rules = windows(
        [
            {"days": "mon-fri", "hours": ["09:00-12:00", "13:00-17:30"]},
            {"days": "sat", "hours": "10:00-24:00"},
            {"days": "sun", "hours": "00:00-02:00"},
        ]
    )
    assert not rules.is_open(at(2024, 6, 3, 12, 30))  # lunch
    assert rules.next_change(at(2024, 6, 3, 12, 30)) == at(2024, 6, 3, 13)
    # Saturday 10:00 to Sunday 02:00 is one span
    assert rules.next_change(at(2024, 6, 8, 23)) == at(2024, 6, 9, 2)


def test_calendar_days_are_local_and_23_hours_on_the_spring_day() -> None:
    start, end = period_bounds(at(2024, 3, 31, 12), BERLIN, "day")
    assert (start, end) == (at(2024, 3, 31), at(2024, 4, 1))
    assert end - start == 23 * 3600
    start, end = period_bounds(at(2024, 3, 31, 12, 30), BERLIN, "hour")
    assert (start, end) == (at(2024, 3, 31, 12), at(2024, 3, 31, 13))


async def test_sending_pauses_outside_the_window_and_resumes_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Friday 16:00 Berlin, one message a minute in office hours, until Tuesday noon
    wall = TrioWallClock(at(2024, 3, 29, 16))
    limit = Limit(
        "c",
        parse_limit(
            {"rate": "1/min", "windows": {"days": "mon-fri", "hours": "09:00-17:00"}},
            timezone=BERLIN,
        ),
        wall=wall,
    )
    sent: list[float] = []
    while wall() < at(2024, 4, 2, 12):
        await limit.acquire()
        sent.append(wall())
    days = per_local_day(sent)
    assert days == {date(2024, 3, 29): 60, date(2024, 4, 1): 480, date(2024, 4, 2): 181}
    monday = [w for w in sent if local(w).date() == date(2024, 4, 1)]
    assert monday[0] == at(2024, 4, 1, 9)  # on time, in summer time
    assert monday[-1] == at(2024, 4, 1, 16, 59)
    assert max(w for w in sent if local(w).date() == date(2024, 3, 29)) == at(2024, 3, 29, 16, 59)


async def test_night_window_over_the_dst_change_sends_for_its_real_length(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wall = TrioWallClock(at(2024, 3, 30, 20))
    limit = Limit(
        "c",
        parse_limit(
            {"rate": "1/min", "window": {"days": "sat", "hours": "23:00-04:00"}},
            timezone=BERLIN,
        ),
        wall=wall,
    )
    sent: list[float] = []
    while wall() < at(2024, 3, 31, 12):
        await limit.acquire()
        sent.append(wall())
        if len(sent) > 300:
            break
    night = [w for w in sent if w < at(2024, 3, 31, 12)]
    assert len(night) == 240  # 4 real hours, not 5
    assert night[0] == at(2024, 3, 30, 23)
    assert night[-1] == at(2024, 3, 31, 3, 59)  # 01:59 UTC, the last minute before 04:00


async def test_day_and_hour_caps_reset_at_local_boundaries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wall = TrioWallClock(at(2024, 3, 30, 21, 30))
    limit = Limit("c", parse_limit({"per_day": 1000, "per_hour": 400}, timezone=BERLIN), wall=wall)
    grants: list[tuple[float, int]] = []
    while wall() < at(2024, 3, 31, 3):
        n = await limit.acquire(250)
        grants.append((wall(), n))
    by_time: dict[float, int] = {}
    for w, n in grants:
        by_time[w] = by_time.get(w, 0) + n
    # 21:30 400 (hour cap), 22:00 400, 23:00 200 (day cap: 1000), then local midnight
    assert by_time[at(2024, 3, 30, 21, 30)] == 400
    assert by_time[at(2024, 3, 30, 22)] == 400
    assert by_time[at(2024, 3, 30, 23)] == 200
    after_midnight = [w for w in by_time if w >= at(2024, 3, 31)]
    # local hours 00, 01, then 03 (02:00-03:00 does not exist that night): one hour apart
    assert [local(w).hour for w in after_midnight] == [0, 1, 3]
    assert after_midnight[2] - after_midnight[1] == 3600
    assert [by_time[w] for w in after_midnight] == [400, 400, 200]  # the new day's 1000
    assert sum(n for w, n in grants if w < at(2024, 3, 31)) == 1000


async def test_warm_up_ramp_over_five_days(autojump_clock: trio.testing.MockClock) -> None:
    wall = TrioWallClock(at(2024, 5, 6, 8))
    pacer = Pacer(
        parse_pacing(
            {
                "timezone": "Europe/Berlin",
                "campaign": {
                    "rate": "100/s",
                    "burst": 100,
                    "ramp": {"start": 500, "growth": "50%", "max": 2000},
                },
            }
        ),
        wall=wall,
    )
    sent: list[float] = []
    while wall() < at(2024, 5, 10, 23):
        n = await pacer.acquire("warm-up", want=100)
        sent.extend([wall()] * n)
    days = per_local_day(w for w in sent if w < at(2024, 5, 11))
    assert list(days.values()) == [500, 750, 1125, 1687, 2000]
    assert min(sent) == at(2024, 5, 6, 8)  # day 0 is the first day used


async def test_ramp_since_a_date_and_seeded_counts_after_a_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wall = TrioWallClock(at(2024, 5, 8, 12))
    spec = parse_limit(
        {"ramp": {"start": 100, "growth": 1.0, "since": "2024-05-06"}}, timezone=BERLIN
    )
    limit = Limit("c", spec, wall=wall)
    limit.seed(sent_today=150)  # day 2 of the ramp: 400 allowed, 150 already sent
    assert limit.try_acquire(1000) == 250
    assert limit.try_acquire(1) == 0
    assert limit.ready_at() == pytest.approx(trio.current_time() + 12 * 3600)


async def test_seed_from_the_ledger_periods_and_ramp_day_zero(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a restart the runner asks for the current periods, counts them in the ledger
    and seeds them; a ramp without ``since`` resumes from the first send's day."""
    wall = TrioWallClock(at(2024, 5, 8, 18, 30))
    spec = parse_limit({"per_hour": 50, "ramp": {"start": 100, "growth": 1.0}}, timezone=BERLIN)
    limit = Limit("c", spec, wall=wall)
    assert limit.periods() == {"hour": at(2024, 5, 8, 18), "day": at(2024, 5, 8)}
    assert limit.try_acquire(1000) == 50  # a fresh process: day 0 of the ramp, hour cap
    limit.seed(sent_this_hour=45, sent_today=390, first_sent_at=at(2024, 5, 6, 9))
    assert limit.ramp_since == date(2024, 5, 6)  # day 2: 400 allowed today
    assert limit.try_acquire(1000) == 5  # the hour's 50, 45 already sent
    await trio.sleep(3600)
    assert limit.try_acquire(1000) == 5  # the day's 400, 395 sent
    assert Limit("plain", parse_limit({"rate": "1/s"})).periods() == {}

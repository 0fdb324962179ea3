"""The ETA from the plan: rates, windows, day caps, ramps, groups; checked against the Pacer."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from mailpacer.pacing import Pacer, TrioWallClock, estimate_finish, parse_limit, parse_pacing

from .helpers import BERLIN, at

OFFICE_RAMP = {
    "timezone": "Europe/Berlin",
    "campaign": {
        "rate": "300/min",
        "windows": {"days": "mon-fri", "hours": "09:00-17:00"},
        "ramp": {"start": 500, "growth": "50%"},
    },
}


def test_plain_rate() -> None:
    now = at(2024, 6, 3, 12)
    spec = parse_limit({"rate": "300/min"})
    assert estimate_finish(1000, [spec], now=0.0, wall=now) == pytest.approx(now + 200)
    assert estimate_finish(0, [spec], now=0.0, wall=now) == now
    assert estimate_finish(10**6, [], now=0.0, wall=now) == pytest.approx(now, abs=1e-3)


def test_windows_weekend_and_ramp_over_days() -> None:
    # Friday 08:00: 500 on Friday from 09:00 (100 s at 5/s), nothing on the weekend, and the
    # ramp counts calendar days: Monday is day 3 (1687), so 1500 more take 300 s from 09:00
    spec = parse_pacing(OFFICE_RAMP).campaign
    assert spec is not None
    finish = estimate_finish(2000, [spec], now=0.0, wall=at(2024, 3, 29, 8))
    assert finish == pytest.approx(at(2024, 4, 1, 9, 5))
    within_friday = estimate_finish(400, [spec], now=0.0, wall=at(2024, 3, 29, 8))
    assert within_friday == pytest.approx(at(2024, 3, 29, 9, 1, zone=BERLIN) + 20)


def test_groups_share_the_campaign_rate_max_min_fairly() -> None:
    shared = [parse_limit({"rate": "10/s"})]
    gmail = [parse_limit({"rate": "2/s"})]
    groups = {"gmail": gmail}
    # other gets 8/s, gmail 2/s: both done at 100 s
    assert estimate_finish(
        {"gmail": 200, None: 800}, shared, group_limits=groups, now=0.0, wall=0.0
    ) == pytest.approx(100.0)
    # gmail's extra 100 go on alone at 2/s after the others finish at 100 s
    assert estimate_finish(
        {"gmail": 300, None: 800}, shared, group_limits=groups, now=0.0, wall=0.0
    ) == pytest.approx(150.0)
    # a group with a day cap waits for the next day
    capped = {"gmail": [parse_limit({"per_day": 100})]}
    assert estimate_finish(
        {"gmail": 150}, shared, group_limits=capped, now=0.0, wall=at(2024, 6, 3, 12, zone=BERLIN)
    ) == pytest.approx(at(2024, 6, 4, 2) + 5)  # 100 now; 50 from UTC midnight (02:00 here)


async def test_eta_agrees_with_the_pacer_that_sends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wall = TrioWallClock(at(2024, 3, 29, 8))
    pacer = Pacer(parse_pacing(OFFICE_RAMP), wall=wall)
    predicted = pacer.eta("news", 2000)
    sent = 0
    while sent < 2000:
        sent += await pacer.acquire("news", want=min(50, 2000 - sent))
    assert predicted is not None
    assert wall() == pytest.approx(predicted, abs=1.0)  # the last grant, within an interval


async def test_eta_follows_live_state(autojump_clock: trio.testing.MockClock) -> None:
    wall = TrioWallClock(at(2024, 6, 3, 12))
    pacer = Pacer(
        parse_pacing(
            {
                "relays": {"ses": {"rate": "10/s", "aimd": {}}},
                "campaign": {"per_day": 1000},
                "timezone": "Europe/Berlin",
            }
        ),
        wall=wall,
    )
    assert pacer.eta("c", 600, relay="ses") == pytest.approx(wall() + 60)
    pacer.observe(421, "4.7.0 slow down", relay="ses")  # half the rate
    assert pacer.eta("c", 600, relay="ses") == pytest.approx(wall() + 120)
    pacer.observe(421, "try again in 5 minutes", relay="ses")  # paused, then a quarter
    assert pacer.eta("c", 600, relay="ses") == pytest.approx(wall() + 300 + 120)
    campaign = pacer.campaign("c")
    assert campaign is not None
    campaign.seed(sent_today=900)  # 100 left today, 500 tomorrow from local midnight
    assert pacer.eta("c", 600, relay="ses") == pytest.approx(at(2024, 6, 4) + 100)

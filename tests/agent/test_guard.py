"""The reputation guard: its arithmetic, and a campaign that pauses itself on a real server
that refuses too many recipients."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailpacer.engine.campaign import CampaignAborted
from mailpacer.ledger.states import RecipientState as R
from mailpacer.pacing.guard import ReputationGuard

from ..servers.aiosmtpd_server import RecordingHandler, serving_aiosmtpd
from .test_relays import runner_for

SENT, BOUNCED, DEFERRED, FAILED = R.SENT, R.BOUNCED, R.DEFERRED, R.FAILED


def test_needs_a_full_window_before_judging() -> None:
    guard = ReputationGuard(bounce_rate=0.05, window=100)
    assert guard.observe([BOUNCED] * 99) is None  # 99 % bounces, but only 99 attempts


def test_bounce_rate_is_over_the_limit_not_at_it() -> None:
    guard = ReputationGuard(bounce_rate=0.05, window=500)
    assert guard.observe([SENT] * 475 + [BOUNCED] * 25) is None  # exactly 5 %
    trip = guard.observe([BOUNCED])  # the window slides: 26 of the last 500
    assert trip is not None
    assert trip.guard == "bounce_rate"
    assert trip.rate == pytest.approx(26 / 500)
    assert "5.2% hard bounces among the last 500 attempts (limit 5%)" in str(trip)


def test_deferral_rate_and_a_sliding_window() -> None:
    guard = ReputationGuard(deferral_rate=0.30, window=10)
    assert guard.observe([SENT] * 7 + [DEFERRED] * 3) is None
    trip = guard.observe([DEFERRED])
    assert trip is not None
    assert trip.guard == "deferral_rate"
    guard = ReputationGuard(bounce_rate=0.2, window=10)
    assert guard.observe([BOUNCED] * 2 + [SENT] * 8) is None
    assert guard.observe([SENT] * 10) is None  # the bounces left the window
    assert guard.observe([FAILED] * 10) is None  # other failures are not bounces


@pytest.mark.parametrize(
    "kwargs", [{"window": 0}, {"bounce_rate": 0}, {"deferral_rate": 1.5}, {"bounce_rate": -1}]
)
def test_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        ReputationGuard(**kwargs)  # type: ignore[arg-type]


async def test_campaign_pauses_itself_when_too_many_recipients_bounce(tmp_path: Path) -> None:
    # Every 10th address is unknown at the (real, aiosmtpd) server: 10 % hard bounces.
    def reject(address: str) -> str | None:
        number = int(address.split("@")[0].removeprefix("user"))
        return "550 5.1.1 no such user" if number % 10 == 3 else None

    async with serving_aiosmtpd(RecordingHandler(reject_rcpt=reject)) as server:
        runner = runner_for(tmp_path, [server.url()], 2000, concurrency=2, guard_window=200)
        with pytest.raises(CampaignAborted, match=r"reputation guard: .* hard bounces") as info:
            await runner.run()
        assert "among the last 200 attempts (limit 5%)" in str(info.value)
        counts = runner.ledger.sync.state_counts(runner.campaign_id)
        assert counts["bounced"] >= 11  # more than 5 % of 200
        assert counts["sent"] + counts["bounced"] < 400  # stopped soon after the window filled
        assert counts["pending"] > 1500  # the rest of the list is kept
        tripped = runner.metrics.guard_tripped.labels("relays", "bounce_rate")._value.get()
        assert tripped == 1

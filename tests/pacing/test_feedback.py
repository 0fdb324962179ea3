"""Replies drive the pace: throttle classification, hints, AIMD cut and recovery, pauses."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from mailpacer.ledger import RecipientState
from mailpacer.pacing import Aimd, AimdSpec, Pacer, classify_reply, parse_pacing, parse_retry_hint
from mailpacer.pacing.policy import RetryPolicy, outcome_for
from mailpacer.smtp.client import OutboundMessage, ResultKind, SendResult, Stage
from mailpacer.smtp.protocol import Reply


@pytest.mark.parametrize(
    ("code", "text", "throttle", "hint"),
    [
        (250, "2.0.0 Ok: queued", False, None),
        (421, "4.7.0 Try again later, closing connection", True, None),
        (454, "Throttling failure: Maximum sending rate exceeded.", True, None),
        (451, "4.7.500 Server busy. Please try again in 30 seconds.", True, 30.0),
        (450, "4.2.1 receiving mail at a rate that prevents additional messages", True, None),
        (452, "4.5.3 Too many recipients", True, None),
        (447, "4.7.1 Rate limit exceeded, retry after 2 minutes", True, 120.0),
        (432, "4.7.12 too many connections, wait 1 hour", True, 3600.0),
        (441, "4.4.1 connection timed out", False, None),
        (550, "5.7.1 rate limit exceeded", False, None),  # permanent: not a pace signal
        (None, "connection lost", False, None),
    ],
)
def test_classify_reply(code: int | None, text: str, throttle: bool, hint: float | None) -> None:
    signal = classify_reply(code, text)
    assert signal.throttle is throttle
    assert signal.retry_after == hint
    assert signal.success is (code == 250)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("try again in 30 seconds", 30.0),
        ("Please retry after 2 minutes", 120.0),
        ("Retry-After: 90", 90.0),
        ("try again in 1.5 min", 90.0),
        ("come back in 2 hours", 7200.0),
        ("will retry 3 times", None),
        ("try again later", None),
    ],
)
def test_parse_retry_hint(text: str, seconds: float | None) -> None:
    assert parse_retry_hint(text) == seconds


def test_aimd_cuts_once_per_holdoff_floors_and_recovers() -> None:
    aimd = Aimd(AimdSpec(decrease=0.5, increase=0.1, floor=0.2, holdoff=5.0))
    assert aimd.throttled(0.0)
    assert not aimd.throttled(1.0)  # the same burst of throttles: one cut
    assert aimd.factor == 0.5
    assert not aimd.succeeded(2.0)  # no increase right after a cut
    assert aimd.throttled(6.0)
    assert aimd.factor == 0.25
    assert aimd.throttled(12.0)
    assert aimd.factor == 0.2
    assert aimd.succeeded(20.0, n=3)
    assert aimd.factor == pytest.approx(0.5)
    for _ in range(10):
        aimd.succeeded(21.0)
    assert aimd.factor == 1.0
    assert aimd.cuts == 3


async def measured_gaps(pacer: Pacer, count: int, relay: str = "ses") -> list[float]:
    times = []
    for _ in range(count):
        await pacer.acquire("c", relay=relay)
        times.append(trio.current_time())
    return [b - a for a, b in itertools.pairwise(times)]


async def test_throttle_halves_the_relay_rate_and_successes_restore_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(
        parse_pacing(
            {
                "relays": {
                    "ses": {
                        "rate": "10/s",
                        "aimd": {"decrease": 0.5, "increase": 0.05, "floor": 0.25, "holdoff": 5},
                    }
                }
            }
        )
    )
    assert await measured_gaps(pacer, 20) == pytest.approx([0.1] * 19)
    signal = pacer.observe(454, "Throttling failure: Maximum sending rate exceeded.", relay="ses")
    assert signal.throttle
    pacer.observe(454, "Throttling", relay="ses", n=8)  # the rest of the pipeline: no new cut
    assert pacer.relay("ses").rate_factor == 0.5
    gaps = await measured_gaps(pacer, 20)
    assert gaps[1:] == pytest.approx([0.2] * 18)
    # another relay is not slowed down
    assert await measured_gaps(pacer, 5, relay="other") == [0.0] * 4
    await trio.sleep(5)
    for _ in range(3):
        pacer.observe(421, "4.7.0 slow down", relay="ses")
        await trio.sleep(5)
    assert pacer.relay("ses").rate_factor == 0.25  # floor
    assert (await measured_gaps(pacer, 10))[1:] == pytest.approx([0.4] * 8)
    pacer.observe(250, "ok", relay="ses", n=15)  # additive: +0.05 each, back to 1
    assert pacer.relay("ses").rate_factor == 1.0
    assert (await measured_gaps(pacer, 10))[1:] == pytest.approx([0.1] * 8)


async def test_a_hint_pauses_that_relay_until_then(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(parse_pacing({"relays": {"*": {"rate": "10/s", "aimd": {"max_pause": "1m"}}}}))
    await pacer.acquire("c", relay="a")
    start = trio.current_time()
    pacer.observe(421, "4.7.0 Too many messages, try again in 30 seconds", relay="a")
    assert pacer.try_acquire("c", relay="a") == 0
    assert pacer.when("c", relay="a") == pytest.approx(start + 30)
    assert await pacer.acquire("c", relay="b") == 1  # relay b is not paused
    await pacer.acquire("c", relay="a")
    assert trio.current_time() - start == pytest.approx(30.0)
    pacer.observe(421, "retry after 2 hours", relay="a")  # capped by max_pause
    assert pacer.when("c", relay="a") == pytest.approx(trio.current_time() + 60)


async def test_hints_pause_even_levels_without_limits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer()  # nothing configured
    pacer.observe(450, "4.2.0 rate limited, try again in 45 s", group="gmail")
    start = trio.current_time()
    assert await pacer.acquire("c", group="yahoo", want=50) == 50
    assert await pacer.acquire("c", group="gmail", want=50) == 50
    assert trio.current_time() - start == pytest.approx(45.0)


def test_deferral_honours_the_hint_in_the_retry_time() -> None:
    message = OutboundMessage("a@example.com", "b@example.net", b"", 0)
    result = SendResult(
        message,
        ResultKind.TRANSIENT,
        Stage.RCPT,
        Reply(451, ("4.7.1 try again in 2 hours",)),
    )
    hint = classify_reply(451, result.reply_text).retry_after
    outcome = outcome_for(
        result,
        recipient_id=1,
        attempts=1,
        first_attempt_at=0.0,
        now=1000.0,
        policy=RetryPolicy(jitter=0.0),
        retry_after=hint,
    )
    assert outcome.state is RecipientState.DEFERRED
    assert outcome.next_attempt_at == 1000.0 + 7200.0
    without = outcome_for(
        result,
        recipient_id=1,
        attempts=1,
        first_attempt_at=0.0,
        now=1000.0,
        policy=RetryPolicy(jitter=0.0),
    )
    assert without.next_attempt_at == 1000.0 + 120.0

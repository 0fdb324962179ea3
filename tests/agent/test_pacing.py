"""Pacing on Trio's virtual clock, rate parsing, retry backoff and SMTP-result mapping."""

from __future__ import annotations

import itertools
import random

import pytest
import trio
import trio.testing

from mailpacer.config import ConfigError, parse_rate
from mailpacer.ledger import Outcome, RecipientState
from mailpacer.pacing import RateLimiter
from mailpacer.pacing.policy import RetryPolicy, outcome_for
from mailpacer.smtp.client import OutboundMessage, ResultKind, SendResult, Stage
from mailpacer.smtp.protocol import Reply

R = RecipientState


# -- RateLimiter (GCRA) on a MockClock --------------------------------------------------------


async def send_times(limiter: RateLimiter, count: int) -> list[float]:
    times: list[float] = []
    while len(times) < count:
        granted = await limiter.take()
        assert granted == 1
        times.append(trio.current_time())
    return times


async def test_600_per_minute_is_exactly_10_per_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter(parse_rate("600/min"))
    start = trio.current_time()
    times = await send_times(limiter, 1000)
    elapsed = times[-1] - start
    assert 99.9 - 1e-6 <= elapsed <= 100.1
    assert elapsed == pytest.approx(99.9, abs=1e-6)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) == pytest.approx(0.1, abs=1e-9)
    assert max(gaps) == pytest.approx(0.1, abs=1e-9)
    # in any window of 10 s there are never more than 100 sends
    for i in range(len(times) - 100):
        assert times[i + 100] - times[i] >= 10.0 - 1e-6
    assert limiter.waited == pytest.approx(99.9, abs=1e-6)


async def test_burst_goes_at_once_then_settles_to_the_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter(parse_rate("10/s"), burst=5)
    start = trio.current_time()
    times = [t - start for t in await send_times(limiter, 25)]
    assert times[:5] == [0.0] * 5
    assert limiter.waited == pytest.approx(2.0, abs=1e-6)  # 20 waits of one interval
    assert times[5:] == pytest.approx([0.1 * n for n in range(1, 21)], abs=1e-9)
    # long-run average is still the rate: 25 sends within (25 - 5) intervals
    assert times[-1] == pytest.approx(2.0, abs=1e-9)


async def test_take_many_grants_at_most_the_burst(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter(parse_rate("10/s"), burst=8)
    assert await limiter.take(100) == 8
    assert limiter.waited == 0.0
    start = trio.current_time()
    assert await limiter.take(100) == 1  # the bucket is empty: one interval, one message
    assert trio.current_time() - start == pytest.approx(0.1, abs=1e-9)
    await trio.sleep(0.35)  # 3.5 intervals of credit
    assert await limiter.take(100) == 3
    assert await limiter.take(2) == 1


async def test_idle_time_does_not_bank_more_than_the_burst(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter(parse_rate("10/s"), burst=3)
    await send_times(limiter, 3)
    await trio.sleep(3600)
    start = trio.current_time()
    times = [t - start for t in await send_times(limiter, 6)]
    assert times == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2, 0.3], abs=1e-9)


async def test_waited_accounts_only_for_real_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter(parse_rate("2/s"))
    assert limiter.delay() == 0.0
    await limiter.take()
    assert limiter.delay() == pytest.approx(0.5)
    await trio.sleep(0.2)
    assert limiter.delay() == pytest.approx(0.3)
    await limiter.take()
    assert limiter.waited == pytest.approx(0.3)
    await trio.sleep(10)
    await limiter.take()
    assert limiter.waited == pytest.approx(0.3)


async def test_concurrent_takers_share_the_rate(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(parse_rate("100/s"))
    times: list[float] = []

    async def worker() -> None:
        for _ in range(50):
            await limiter.take()
            times.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(worker)
    assert len(times) == 500
    assert max(times) - start == pytest.approx(4.99, abs=1e-6)
    ordered = sorted(times)
    # burst 1: no two messages closer than one interval, however many tasks ask
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    assert min(gaps) == pytest.approx(0.01, abs=1e-9)


async def test_cancelled_take_consumes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(parse_rate("1/min"))
    await limiter.take()
    with trio.move_on_after(5) as scope:
        await limiter.take()
    assert scope.cancelled_caught
    # cancelled while waiting: nothing was granted, so the next slot is unchanged, and
    # only the time actually spent waiting is accounted
    assert limiter.delay() == pytest.approx(55.0, abs=1e-6)
    assert limiter.waited == pytest.approx(5.0, abs=1e-6)
    start = trio.current_time()
    assert await limiter.take() == 1
    assert trio.current_time() - start == pytest.approx(55.0, abs=1e-6)
    assert limiter.waited == pytest.approx(60.0, abs=1e-6)


def test_limiter_with_an_explicit_mock_clock() -> None:
    # the same pacing without autojump: the clock only moves when the test moves it
    clock = trio.testing.MockClock()
    done: list[float] = []

    async def sender(limiter: RateLimiter) -> None:
        for _ in range(3):
            await limiter.take()
            done.append(trio.current_time())

    async def drive() -> None:
        limiter = RateLimiter(parse_rate("1/s"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender, limiter)
            await trio.testing.wait_all_tasks_blocked()
            assert len(done) == 1
            clock.jump(0.5)
            await trio.testing.wait_all_tasks_blocked()
            assert len(done) == 1  # half an interval is not enough
            clock.jump(0.5)
            await trio.testing.wait_all_tasks_blocked()
            assert len(done) == 2
            clock.jump(1.0)
        assert limiter.waited == pytest.approx(2.0)

    trio.run(drive, clock=clock)
    assert [t - done[0] for t in done] == pytest.approx([0.0, 1.0, 2.0])


def test_burst_must_be_positive() -> None:
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(parse_rate("1/s"), burst=0)


# -- parse_rate ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("600/min", 10.0),
        ("10/s", 10.0),
        ("3600/h", 1.0),
        ("3600/hour", 1.0),
        ("7200/hours", 2.0),
        ("86400/day", 1.0),
        ("2/days", 2 / 86400),
        ("30/sec", 30.0),
        ("120/minute", 2.0),
        ("60/mins", 1.0),
        ("100/5min", 100 / 300),
        (" 1.5 / 2 s ", 0.75),
        ("300/MIN", 5.0),
    ],
)
def test_parse_rate_forms(text: str, per_second: float) -> None:
    rate = parse_rate(text)
    assert rate.per_second == pytest.approx(per_second)
    assert rate.interval == pytest.approx(1 / per_second)
    assert str(rate) == text.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected a positive number per unit"),
        ("600", "expected a positive number per unit"),
        ("fast", "expected a positive number per unit"),
        ("-5/s", "expected a positive number per unit"),
        ("1e3/s", "expected a positive number per unit"),
        ("0/s", "greater than zero"),
        ("10/0min", "greater than zero"),
        ("10/week", "unknown unit 'week'"),
        ("10/ms", "unknown unit 'ms'"),  # not silently "per minute"
        ("10/hs", "unknown unit 'hs'"),
        ("10/ss", "unknown unit 'ss'"),
    ],
)
def test_parse_rate_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_rate(text)
    assert repr(text) in str(info.value)


# -- RetryPolicy ---------------------------------------------------------------------------


def test_backoff_doubles_with_bounded_jitter_up_to_the_maximum() -> None:
    policy = RetryPolicy(base=60, maximum=3600, jitter=0.2)
    rng = random.Random(1234)
    for attempt, nominal in [(1, 60), (2, 120), (3, 240), (4, 480), (6, 1920), (7, 3600)]:
        samples = [policy.delay(attempt, rng) for _ in range(500)]
        assert min(samples) >= nominal * 0.8
        assert max(samples) <= nominal * 1.2
        assert len(set(samples)) > 400  # jittered, not constant
        assert sum(samples) / len(samples) == pytest.approx(nominal, rel=0.03)
    assert max(policy.delay(50, rng) for _ in range(200)) <= 3600 * 1.2


def test_backoff_without_jitter_and_floor() -> None:
    exact = RetryPolicy(base=10, maximum=100, jitter=0.0)
    assert [exact.delay(n) for n in range(7)] == [10, 10, 20, 40, 80, 100, 100]
    tiny = RetryPolicy(base=0.01, maximum=1, jitter=0.0)
    assert tiny.delay(1) == 1.0  # never retry in a tight loop


# -- outcome_for ----------------------------------------------------------------------------

MESSAGE = OutboundMessage("s@example.org", "r@example.org", b".\r\n", 0)
NO_JITTER = RetryPolicy(base=60, maximum=3600, max_age=86400, jitter=0.0)


def result(kind: ResultKind, stage: Stage, code: int | None, text: str = "") -> SendResult:
    reply = Reply(code, (text,)) if code is not None else None
    return SendResult(MESSAGE, kind, stage, reply, detail=text)


def outcome(
    res: SendResult, *, attempts: int = 0, first: float | None = None, now: float = 1e6
) -> Outcome:
    return outcome_for(
        res, recipient_id=7, attempts=attempts, first_attempt_at=first, now=now, policy=NO_JITTER
    )


@pytest.mark.parametrize(
    ("kind", "stage", "code", "state"),
    [
        (ResultKind.SENT, Stage.DOT, 250, R.SENT),
        (ResultKind.TRANSIENT, Stage.RCPT, 450, R.DEFERRED),
        (ResultKind.TRANSIENT, Stage.MAIL, 421, R.DEFERRED),
        (ResultKind.TRANSIENT, Stage.DOT, 452, R.DEFERRED),
        (ResultKind.TRANSIENT, Stage.CONNECTION, None, R.DEFERRED),
        (ResultKind.PERMANENT, Stage.RCPT, 550, R.BOUNCED),
        (ResultKind.PERMANENT, Stage.RCPT, 551, R.BOUNCED),
        (ResultKind.PERMANENT, Stage.RCPT, 553, R.BOUNCED),
        (ResultKind.PERMANENT, Stage.RCPT, 552, R.FAILED),
        (ResultKind.PERMANENT, Stage.RCPT, 554, R.FAILED),
        (ResultKind.PERMANENT, Stage.MAIL, 550, R.FAILED),  # the sender, not the recipient
        (ResultKind.PERMANENT, Stage.DOT, 550, R.FAILED),  # content rejected
        (ResultKind.PERMANENT, Stage.DATA, 554, R.FAILED),
        (ResultKind.PERMANENT, Stage.LOCAL, None, R.FAILED),
        (ResultKind.UNCERTAIN, Stage.DOT, None, R.UNCERTAIN),
    ],
)
def test_outcome_mapping(
    kind: ResultKind, stage: Stage, code: int | None, state: RecipientState
) -> None:
    res = result(kind, stage, code, "5.1.1 no such user" if code else "connection lost")
    out = outcome(res, attempts=2, first=1e6 - 100)
    assert out.state is state
    assert out.recipient_id == 7
    assert out.code == code
    assert out.attempted
    assert out.at == 1e6
    assert out.reply is not None
    assert out.reply.startswith(f"{stage.value}: ")
    if state is R.DEFERRED:
        assert out.next_attempt_at == 1e6 + NO_JITTER.delay(3)
    else:
        assert out.next_attempt_at == 0.0


def test_not_sent_goes_back_to_pending_without_counting_an_attempt() -> None:
    out = outcome(result(ResultKind.NOT_SENT, Stage.CONNECTION, None, "connection refused"))
    assert out.state is R.PENDING
    assert not out.attempted
    assert out.reply == "connection: connection refused"


def test_deferred_backoff_grows_with_attempts() -> None:
    res = result(ResultKind.TRANSIENT, Stage.RCPT, 451, "4.7.1 greylisted")
    delays = [outcome(res, attempts=a, first=1e6).next_attempt_at - 1e6 for a in range(6)]
    assert delays == [60, 120, 240, 480, 960, 1920]


def test_transient_failures_give_up_after_max_age() -> None:
    res = result(ResultKind.TRANSIENT, Stage.RCPT, 451, "4.7.1 try later")
    young = outcome(res, attempts=5, first=1e6 - 86399)
    assert young.state is R.DEFERRED
    old = outcome(res, attempts=5, first=1e6 - 86400)
    assert old.state is R.FAILED
    assert old.code == 451
    assert old.reply is not None
    assert "gave up" in old.reply
    assert "86400s" in old.reply
    # the first attempt starts the clock
    assert outcome(res, attempts=0, first=None).state is R.DEFERRED

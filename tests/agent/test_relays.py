"""Relay choice: priority failover, weighted sharing, circuit breakers (MockClock), and the
engine failing over from a dead relay to a real smtp-sink."""

from __future__ import annotations

import socket
from pathlib import Path

import trio
import trio.testing

from mailpacer.config import parse_relay_url
from mailpacer.engine.campaign import CampaignRunner, EngineSettings
from mailpacer.engine.stats import CampaignStats
from mailpacer.ledger.threaded import AsyncLedger
from mailpacer.metrics import Metrics
from mailpacer.smtp.relays import RelayPool

from ..servers.smtp_sink import SmtpSink, running_smtp_sink, smtp_sink
from .test_engine import make_campaign

__all__ = ["smtp_sink"]

PRIMARY = parse_relay_url("smtp://primary.test:25")
BACKUP = parse_relay_url("smtp://backup.test:25?priority=1")


def names(pool: RelayPool, n: int) -> list[str]:
    chosen = []
    for _ in range(n):
        relay = pool.choose()
        assert relay is not None
        chosen.append(relay.host)
        pool.released(relay)
    return chosen


async def test_priority_failover_and_recovery(autojump_clock: trio.testing.MockClock) -> None:
    changes: list[tuple[str, str]] = []
    pool = RelayPool(
        [PRIMARY, BACKUP],
        threshold=3,
        cooldown=30,
        on_change=lambda n, s, _: changes.append((n, s)),
    )
    assert names(pool, 5) == ["primary.test"] * 5  # the backup waits while the primary works
    for _ in range(3):
        pool.failed(PRIMARY, "connection refused")
    assert changes[-1] == (PRIMARY.name, "open")
    assert names(pool, 3) == ["backup.test"] * 3
    await trio.sleep(29)
    assert names(pool, 1) == ["backup.test"]
    await trio.sleep(1)
    probe = pool.choose()  # cooled down: one probe goes to the primary...
    assert probe is PRIMARY
    assert changes[-1] == (PRIMARY.name, "half_open")
    assert pool.choose() is BACKUP  # ...and only one while it is out
    pool.succeeded(PRIMARY)
    assert changes[-1] == (PRIMARY.name, "closed")
    assert names(pool, 3) == ["primary.test"] * 3


async def test_a_failed_probe_reopens_with_a_longer_cooldown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = RelayPool([PRIMARY], threshold=2, cooldown=10, max_cooldown=25)
    pool.failed(PRIMARY, "x")
    assert pool.choose() is PRIMARY  # one failure is not enough to open
    pool.failed(PRIMARY, "x")
    assert pool.choose() is None
    assert pool.next_retry_in() == 10
    for expected in (20, 25, 25):  # doubled, then capped
        await trio.sleep(pool.next_retry_in())
        assert pool.choose() is PRIMARY
        pool.failed(PRIMARY, "still down")
        assert pool.choose() is None
        assert pool.next_retry_in() == expected


async def test_weights_share_interleaved() -> None:
    heavy = parse_relay_url("smtp://heavy.test?weight=3")
    light = parse_relay_url("smtp://light.test")
    chosen = names(RelayPool([heavy, light]), 400)
    assert chosen.count("heavy.test") == 300
    assert chosen.count("light.test") == 100
    longest = max(len(run) for run in "".join(c[0] for c in chosen).split("l"))
    assert longest <= 3  # smooth: never a long run of one relay


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def runner_for(tmp_path: Path, relays: list[str], count: int, **settings: object) -> CampaignRunner:
    ledger, campaign_id, factory = make_campaign(tmp_path, count)
    return CampaignRunner(
        AsyncLedger(ledger),
        campaign_id,
        factory,
        EngineSettings(relays=tuple(parse_relay_url(r) for r in relays), **settings),  # type: ignore[arg-type]
        owner="test:1",
        stats=CampaignStats("relays"),
        metrics=Metrics(),
        exclusive=True,
    )


async def test_engine_fails_over_to_the_backup_relay(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    dead = f"smtp://127.0.0.1:{free_port()}"
    runner = runner_for(tmp_path, [dead, f"{smtp_sink.url}?priority=1"], 500, concurrency=4)
    result = await runner.run()
    assert result.run.get("sent") == 500
    assert smtp_sink.wait_for_count(500)
    states = {s.name: s.breaker for s in runner.metrics.relays}
    assert states[parse_relay_url(dead).name] == "open"
    assert states[parse_relay_url(smtp_sink.url).name] == "closed"
    primary = runner.relay_pool.states[0]
    assert primary.failures >= 3
    assert "refused" in (primary.last_error or "").lower()


async def test_engine_shares_by_weight(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    with running_smtp_sink(tmp_path / "second") as second:
        runner = runner_for(
            tmp_path, [f"{smtp_sink.url}?weight=3", second.url], 2000, concurrency=8
        )
        result = await runner.run()
        assert result.run.get("sent") == 2000
        sessions = [s.sessions for s in runner.relay_pool.states]
        assert sessions == [6, 2]  # 8 sessions, shared 3:1
        assert smtp_sink.count() > second.count() > 0

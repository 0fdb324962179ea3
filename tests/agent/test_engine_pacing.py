"""The pacing hierarchy inside the engine, against a real (aiosmtpd) server.

A domain group's limit paces only that group (a group that must wait never holds up the
others); a server's "try again in N seconds" pauses the relay and defers the recipient at
least that long; throttling replies cut the group's rate (AIMD).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailpacer.config import parse_relay_url
from mailpacer.engine.campaign import CampaignRunner, EngineSettings
from mailpacer.engine.stats import CampaignStats
from mailpacer.ledger.store import Ledger
from mailpacer.ledger.threaded import AsyncLedger
from mailpacer.message.address import parse_address
from mailpacer.message.factory import StaticFactory
from mailpacer.metrics import Metrics
from mailpacer.pacing.hierarchy import Pacer
from mailpacer.pacing.spec import parse_pacing

from ..servers.aiosmtpd_server import RecordingHandler, serving_aiosmtpd


@dataclass
class TimedHandler(RecordingHandler):
    """Records when each message arrived (its end of data), by recipient."""

    arrivals: list[tuple[float, str]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        self.arrivals.append((time.monotonic(), envelope.rcpt_tos[0]))
        return reply


def runner(tmp_path: Path, url: str, addresses: list[str], pacer: Pacer) -> CampaignRunner:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.upgrade()
    campaign = ledger.create_campaign(
        "paced", sender="n@example.com", template_dir="-", settings={}
    )
    rows = []
    for i, text in enumerate(addresses):
        address = parse_address(text)
        rows.append(
            {"email": address.address, "email_key": address.key, "source_row": i + 2,
             "variables": "{}"}
        )  # fmt: skip
    ledger.insert_recipients(campaign.id, rows)
    eml = tmp_path / "static.eml"
    eml.write_bytes(b"From: n@example.com\r\nSubject: hi\r\n\r\nHello\r\n")
    return CampaignRunner(
        AsyncLedger(ledger),
        campaign.id,
        StaticFactory(eml, envelope_sender="n@example.com"),
        EngineSettings(relays=(parse_relay_url(url),), concurrency=4, wait_deferred=0),
        owner="test:1",
        stats=CampaignStats("paced"),
        metrics=Metrics(),
        exclusive=True,
        pacer=pacer,
    )


async def test_a_slow_domain_group_does_not_hold_up_the_others(tmp_path: Path) -> None:
    gmail = [f"g{i}@gmail.com" for i in range(8)]
    others = [f"o{i}@example.net" for i in range(150)]
    addresses = [a for pair in zip(gmail, others[:8], strict=True) for a in pair] + others[8:]
    pacer = Pacer(parse_pacing({"groups": {"gmail": {"rate": "1/s", "burst": 1}}}))
    handler = TimedHandler()
    async with serving_aiosmtpd(handler) as server:
        result = await runner(tmp_path, server.url(), addresses, pacer).run()
    assert result.run.get("sent") == 158
    times = {rcpt: t for t, rcpt in handler.arrivals}
    gmail_times = sorted(times[a] for a in gmail)
    last_other = max(times[a] for a in others)
    gaps = [b - a for a, b in itertools.pairwise(gmail_times)]
    print(
        f"gmail group at 1/s: 8 messages over {gmail_times[-1] - gmail_times[0]:.2f} s "
        f"(smallest gap {min(gaps):.3f} s); the 150 others were all in after "
        f"{last_other - min(times.values()):.2f} s, with "
        f"{sum(1 for t in gmail_times if t <= last_other)} gmail ones"
    )
    assert gmail_times[-1] - gmail_times[0] >= 7 * 1.0 - 0.5  # the group's pace held
    assert sum(1 for t in gmail_times if t <= last_other) <= 5  # the others did not wait


async def test_try_again_hint_pauses_the_relay_and_defers_at_least_that_long(
    tmp_path: Path,
) -> None:
    refused: list[str] = []

    def reject(address: str) -> str | None:
        if address.startswith("x") and not refused:
            refused.append(address)
            return "451 4.7.1 Too many messages, try again in 3 seconds"
        return None

    addresses = [f"a{i}@example.net" for i in range(5)] + ["x0@example.net"]
    addresses += [f"b{i}@example.net" for i in range(40)]
    handler = TimedHandler(reject_rcpt=reject)
    pacer = Pacer()
    async with serving_aiosmtpd(handler) as server:
        run = runner(tmp_path, server.url(), addresses, pacer)
        started = time.time()
        result = await run.run()
        relay = pacer.relay(parse_relay_url(server.url()).name)
    assert refused == ["x0@example.net"]
    rows = {r["email"]: r for r in run.ledger.sync.recipients_in(run.campaign_id, ["deferred"])}
    assert set(rows) == {"x0@example.net"}
    due = run.ledger.sync.next_due(run.campaign_id)
    assert due is not None
    assert due >= started + 3.0  # the recipient waits at least what the server asked
    assert "try again in 3 seconds" in rows["x0@example.net"]["last_reply"]
    assert result.run.get("sent") == 45
    assert relay.paused_until > 0  # the relay level was paused by the hint
    # the throttle cut the relay's rate: AIMD (the default relay level has no rate, so
    # only the pause applies); messages after the refusal waited for the pause to end
    arrivals = sorted(handler.arrivals)
    assert arrivals[-1][0] - arrivals[0][0] >= 2.5


async def test_hard_bounces_are_suppressed_and_skipped_by_the_next_campaign(
    tmp_path: Path,
) -> None:
    def reject(address: str) -> str | None:
        return f"550 5.1.1 <{address}>: no such user" if address.startswith("gone") else None

    addresses = [f"ok{i}@example.net" for i in range(20)] + ["gone1@example.net", "gone2@x.org"]
    handler = TimedHandler(reject_rcpt=reject)
    async with serving_aiosmtpd(handler) as server:
        first = runner(tmp_path, server.url(), addresses, Pacer())
        await first.run()
        ledger = first.ledger.sync
        assert ledger.state_counts(first.campaign_id)["bounced"] == 2
        second = ledger.create_campaign(
            "again", sender="n@example.com", template_dir="-", settings={}
        )
        ledger.insert_recipients(
            second.id,
            [{"email": a, "email_key": a, "source_row": n, "variables": "{}"}
             for n, a in enumerate(addresses)],
        )  # fmt: skip
        before = len(handler.messages)
        again = CampaignRunner(
            first.ledger, second.id, first.factory, first.settings, owner="test:1",
            stats=CampaignStats("again"), metrics=Metrics(), exclusive=True, pacer=Pacer(),
        )  # fmt: skip
        await again.run()
    counts = ledger.state_counts(second.id)
    assert counts["suppressed"] == 2  # never rendered, never offered to the relay
    assert counts["sent"] == 20
    delivered_again = {rcpt for m in handler.messages[before:] for rcpt in m.rcpt_tos}
    assert not delivered_again & {"gone1@example.net", "gone2@x.org"}


@dataclass
class SessionCounter(TimedHandler):
    """Counts SMTP sessions open at once (EHLO to the end of the connection)."""

    open_now: int = 0
    most: int = 0

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:  # fmt: skip
        self.open_now += 1
        self.most = max(self.most, self.open_now)
        transport = server.transport
        if transport is not None:
            closed = server.connection_lost

            def lost(exc: Exception | None) -> None:
                self.open_now -= 1
                closed(exc)

            server.connection_lost = lost  # type: ignore[method-assign]
        return await super().handle_EHLO(server, session, envelope, hostname, responses)


async def test_relay_connection_and_per_connection_caps(tmp_path: Path) -> None:
    pacer = Pacer(
        parse_pacing({"relays": {"*": {"max_connections": 2, "max_messages_per_connection": 25}}})
    )
    handler = SessionCounter()
    addresses = [f"c{i}@example.net" for i in range(200)]
    async with serving_aiosmtpd(handler) as server:
        run = runner(tmp_path, server.url(), addresses, pacer)  # concurrency 4 asked
        result = await run.run()
    sessions = len({m.peer_port for m in handler.messages})
    print(f"200 messages, at most {handler.most} sessions at once, {sessions} sessions")
    assert result.run.get("sent") == 200
    assert handler.most <= 2
    assert sessions >= 200 // 25  # a session ends after 25 messages

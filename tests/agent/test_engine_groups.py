"""Issue 4's engine gaps: in-flight caps per domain group, the ETA from the pacing plan,
hour/day caps that survive a restart. Against a real (aiosmtpd) server and ledger.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import trio
import trio.testing
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailpacer.commands.status import run_status
from mailpacer.config import parse_relay_url
from mailpacer.engine.campaign import CampaignRunner, EngineSettings
from mailpacer.engine.stats import CampaignStats
from mailpacer.ledger.states import RecipientState
from mailpacer.ledger.store import Ledger, Outcome
from mailpacer.ledger.threaded import AsyncLedger
from mailpacer.message.address import parse_address
from mailpacer.message.factory import StaticFactory
from mailpacer.metrics import Metrics
from mailpacer.pacing import LimitSpec, Pacer, TrioWallClock, parse_limit, parse_pacing
from mailpacer.smtp.client import Timeouts

from ..servers.aiosmtpd_server import RecordingHandler, serving_aiosmtpd

BERLIN = ZoneInfo("Europe/Berlin")
PATIENT = Timeouts(**{name: 3600.0 for name in Timeouts.__dataclass_fields__})


@dataclass
class InFlightHandler(RecordingHandler):
    """Counts transactions per recipient domain between RCPT and the end of DATA (at most
    at once: ``most``); stalls DATA for ``stall`` domains; drops the connection at chosen
    recipients (``drop_at_rcpt`` before the message, ``drop_at_data`` after the dot)."""

    stall: dict[str, float] = field(default_factory=dict)
    drop_at_rcpt: set[str] = field(default_factory=set)
    drop_at_data: set[str] = field(default_factory=set)
    now: dict[str, int] = field(default_factory=Counter)
    most: dict[str, int] = field(default_factory=Counter)
    arrivals: list[tuple[float, str]] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:  # fmt: skip
        if address in self.drop_at_rcpt:
            self.drop_at_rcpt.discard(address)  # once: the retry goes through
            assert server.transport is not None
            server.transport.close()
            return "421 4.4.2 gone"
        reply = await super().handle_RCPT(server, session, envelope, address, rcpt_options)
        domain = address.rpartition("@")[2]
        self.now[domain] += 1
        self.most[domain] = max(self.most[domain], self.now[domain])
        closed = server.connection_lost

        def lost(exc: Exception | None) -> None:  # a session dropped mid-transaction
            if envelope.rcpt_tos and not getattr(envelope, "counted", False):
                self.now[domain] -= 1
                envelope.counted = True  # type: ignore[attr-defined]
            closed(exc)

        server.connection_lost = lost  # type: ignore[method-assign]
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        rcpt = envelope.rcpt_tos[0]
        domain = rcpt.rpartition("@")[2]
        try:
            await asyncio.sleep(self.stall.get(domain, 0.0))
            if rcpt in self.drop_at_data:
                self.drop_at_data.discard(rcpt)
                assert server.transport is not None
                server.transport.close()
                return "421 4.4.2 gone"
            reply = await super().handle_DATA(server, session, envelope)
            self.arrivals.append((time.monotonic(), rcpt))
            return reply
        finally:
            if not getattr(envelope, "counted", False):
                self.now[domain] -= 1
                envelope.counted = True  # type: ignore[attr-defined]


def make_runner(
    tmp_path: Path,
    url: str,
    addresses: list[str],
    pacer: Pacer,
    *,
    pacing: LimitSpec | None = None,
    ledger: Ledger | None = None,
    campaign_id: int | None = None,
    wall: TrioWallClock | None = None,
    concurrency: int = 8,
) -> CampaignRunner:
    if ledger is None:
        ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
        ledger.upgrade()
    if campaign_id is None:
        campaign_id = ledger.create_campaign(
            "groups", sender="n@example.com", template_dir="-", settings={}
        ).id
    rows = []
    for text in addresses:
        address = parse_address(text)
        rows.append(
            {"email": address.address, "email_key": address.key, "source_row": 2,
             "variables": "{}"}
        )  # fmt: skip
    ledger.insert_recipients(campaign_id, rows)
    eml = tmp_path / "static.eml"
    eml.write_bytes(b"From: n@example.com\r\nSubject: hi\r\n\r\nHello\r\n")
    return CampaignRunner(
        AsyncLedger(ledger),
        campaign_id,
        StaticFactory(eml, envelope_sender="n@example.com"),
        EngineSettings(
            relays=(parse_relay_url(url),),
            concurrency=concurrency,
            wait_deferred=0,
            timeouts=PATIENT,
            max_consecutive_failures=0,
        ),
        owner="test:1",
        stats=CampaignStats("groups"),
        metrics=Metrics(),
        exclusive=True,
        pacer=pacer,
        pacing=pacing,
        **({"wall": wall} if wall is not None else {}),
    )


# -- 1. in-flight caps per domain group ----------------------------------------------------


async def test_a_group_in_flight_cap_holds_while_the_other_groups_flow(tmp_path: Path) -> None:
    gmail = [f"g{i}@gmail.com" for i in range(20)]
    others = [f"o{i}@example.net" for i in range(200)]
    # gmail spread evenly (every 11th): each connection's batch holds some of them
    addresses = [a for i, g in enumerate(gmail) for a in (g, *others[10 * i : 10 * i + 10])]
    seen: dict[str, int] = {}
    with trio.fail_after(60):
        for cap in (None, 2):  # without the cap first: the measure can see more than 2
            groups = {"gmail": {"max_in_flight": cap}} if cap else {}
            pacer = Pacer(parse_pacing({"groups": groups}))
            handler = InFlightHandler(
                stall={"gmail.com": 0.3},
                drop_at_rcpt={"g3@gmail.com"},  # lost before the message: sent again
                drop_at_data={"g7@gmail.com"},  # lost after the dot: uncertain
            )
            (tmp_path / str(cap)).mkdir()
            async with serving_aiosmtpd(handler) as server:
                run = make_runner(tmp_path / str(cap), server.url(), addresses, pacer)
                result = await run.run()
            seen[str(cap)] = handler.most["gmail.com"]
            assert result.run.get("sent") == 219
            assert result.run.get("uncertain") == 1
            slots = pacer.in_flight_slots(group="gmail")
            assert slots.borrowed == 0  # nothing leaked (lost connections, retries)
    times = {rcpt: t for t, rcpt in handler.arrivals}
    last_other = max(times[a] for a in others)
    gmail_done = sorted(times[a] for a in gmail if a in times)
    early = sum(1 for t in gmail_done if t <= last_other)
    print(
        f"\ngmail at most in flight at once: {seen['None']} without a cap, {seen['2']} with "
        f"max_in_flight = 2; example.net at most {handler.most['example.net']}; the 200 "
        f"others all in {last_other - min(times.values()):.2f} s, when {early} of 19 gmail "
        f"were (gmail took {gmail_done[-1] - gmail_done[0]:.2f} s)"
    )
    assert seen["2"] <= 2
    assert seen["None"] > 2
    assert early <= 12  # a full group does not hold up the others
    assert gmail_done[-1] - gmail_done[0] >= 19 / 2 * 0.3 - 0.6  # the cap held the pace


async def test_in_flight_slots_come_back_when_the_campaign_is_paused(tmp_path: Path) -> None:
    """Pause (the dispatcher releases what it took) and the stop that follows (stalled
    transactions cancelled after the grace): every slot is given back."""
    gmail = [f"g{i}@gmail.com" for i in range(30)]
    others = [f"o{i}@example.net" for i in range(30)]
    addresses = [a for pair in zip(gmail, others, strict=True) for a in pair]
    pacer = Pacer(parse_pacing({"groups": {"gmail": {"max_in_flight": 3}}}))
    handler = InFlightHandler(stall={"gmail.com": 3.0})
    with trio.fail_after(60):
        async with serving_aiosmtpd(handler) as server:
            run = make_runner(tmp_path, server.url(), addresses, pacer)
            slots = pacer.in_flight_slots(group="gmail")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run.run)
                while slots.borrowed < 3:
                    await trio.sleep(0.01)
                run.ledger.sync.update_campaign(run.campaign_id, control="pause")
    print(f"\npaused with gmail at most {handler.most['gmail.com']} in flight")
    assert handler.most["gmail.com"] <= 3
    assert slots.borrowed == 0
    counts = run.ledger.sync.state_counts(run.campaign_id)
    assert counts["claimed"] == counts["sending"] == 0


async def test_relay_in_flight_cap(tmp_path: Path) -> None:
    pacer = Pacer(parse_pacing({"relays": {"*": {"max_in_flight": 3}}}))
    handler = InFlightHandler(stall={"example.net": 0.02})
    addresses = [f"r{i}@example.net" for i in range(60)]
    with trio.fail_after(60):
        async with serving_aiosmtpd(handler) as server:
            run = make_runner(tmp_path, server.url(), addresses, pacer)
            result = await run.run()
            slots = pacer.in_flight_slots(relay=parse_relay_url(server.url()).name)
    print(f"\nrelay max_in_flight = 3: at most {handler.most['example.net']} at once")
    assert result.run.get("sent") == 60
    assert handler.most["example.net"] <= 3
    assert slots.borrowed == 0


# -- 2. the ETA from the plan ----------------------------------------------------------------


def eta_of(run: CampaignRunner, pending: int) -> float | None:
    run.stats.load({"pending": pending})
    run._publish_gauges()  # what the writer does every flush interval
    gauge = run.metrics.campaign_eta_seconds.labels("groups")._value.get()
    eta = run.stats.eta
    assert gauge == (-1 if eta is None else eta)
    return eta


async def test_eta_comes_from_the_plan(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    friday = datetime(2024, 3, 29, 16, 55, tzinfo=BERLIN)  # a window closes at 17:00
    wall = TrioWallClock(friday.timestamp())
    url = "smtp://127.0.0.1:1"  # never connected: the ETA needs no relay

    def runner(spec: dict[str, object], name: str) -> CampaignRunner:
        (tmp_path / name).mkdir()
        pacing = parse_limit(spec, timezone=BERLIN)
        return make_runner(tmp_path / name, url, [], Pacer(wall=wall), pacing=pacing)

    plain = eta_of(runner({"rate": "300/min"}, "plain"), 3000)
    assert plain is not None
    assert 595 <= plain <= 600  # 3,000 at 300/min: 10 minutes

    windows = {"days": "mon-fri", "hours": "09:00-17:00"}
    night = eta_of(runner({"rate": "300/min", "windows": [windows]}, "night"), 3000)
    monday = datetime(2024, 4, 1, 9, 5, tzinfo=BERLIN)  # 1,500 by 17:00, 1,500 on Monday
    assert night is not None
    assert abs(friday.timestamp() + night - monday.timestamp()) < 2

    capped = eta_of(runner({"rate": "300/min", "per_day": 2000}, "capped"), 3000)
    saturday = datetime(2024, 3, 30, 0, 3, 20, tzinfo=BERLIN)  # 1,000 left after midnight
    assert capped is not None
    assert abs(friday.timestamp() + capped - saturday.timestamp()) < 2
    print(
        f"\nETA of 3,000 at 300/min: {plain / 60:.1f} min; window closing at 17:00 "
        f"(Fri 16:55): {night / 3600:.1f} h; per_day 2,000: {capped / 3600:.2f} h"
    )

    blast = runner({}, "blast")  # nothing paces it: the observed rate is the truth
    assert eta_of(blast, 3000) is None  # nothing measured yet
    slow = runner({"rate": "300/min"}, "slow")  # the plan says 10 min; 1 msg/s is observed
    assert eta_of(slow, 3000) == plain
    for _ in range(5):
        await trio.sleep(1)
        for run, n in ((blast, 100), (slow, 1)):
            run.stats.claimed("pending", n)
            run.stats.settled("sent", n)
            run.stats.sample()
    blast._publish_gauges()
    slow._publish_gauges()
    assert blast.stats.eta == 2500 / 100  # 100 msg/s measured
    assert slow.stats.eta == 2995 / 1  # the later of the plan (599 s) and the measure


# -- 3. caps survive a restart -------------------------------------------------------------


async def test_a_restart_does_not_grant_a_second_days_quota(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """per_day = 100: 60 sent, restart, 40 more that day, the rest after midnight. The
    clocks are virtual: a day in the future (leases look alive to real-time checks) and
    5 times as fast as real time (not autojump: it would jump while a ledger thread or a
    socket is busy)."""
    mock_clock.rate = 5.0
    tomorrow = datetime.now(BERLIN).date() + timedelta(days=1)
    evening = datetime.combine(tomorrow, datetime.min.time(), BERLIN) + timedelta(
        hours=23, minutes=59, seconds=30
    )
    midnight = datetime.combine(tomorrow + timedelta(days=1), datetime.min.time(), BERLIN)
    wall = TrioWallClock(evening.timestamp())
    config = parse_pacing({"timezone": "Europe/Berlin", "campaign": {"per_day": 100}})
    day_cap = config.campaign
    assert day_cap is not None
    handler = InFlightHandler()
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.upgrade()
    cid = ledger.create_campaign("groups", sender="n@example.com", template_dir="-", settings={})
    with trio.fail_after(600):  # virtual: 2 minutes of real time
        async with serving_aiosmtpd(handler) as server:
            first = make_runner(
                tmp_path, server.url(), [f"a{i}@example.net" for i in range(60)],
                Pacer(config, wall=wall), pacing=day_cap, ledger=ledger, campaign_id=cid.id,
                wall=wall,
            )  # fmt: skip
            assert (await first.run()).run.get("sent") == 60
            restarted = wall()
            second = make_runner(
                tmp_path, server.url(), [f"b{i}@example.net" for i in range(90)],
                Pacer(config, wall=wall), pacing=day_cap, ledger=ledger, campaign_id=cid.id,
                wall=wall,
            )  # fmt: skip
            assert (await second.run()).run.get("sent") == 90
    before = ledger.count_sent_since(cid.id, 0.0) - ledger.count_sent_since(
        cid.id, midnight.timestamp()
    )
    after = ledger.count_sent_since(cid.id, midnight.timestamp())
    print(
        f"\nper_day = 100, restart at {datetime.fromtimestamp(restarted, BERLIN):%H:%M:%S}: "
        f"{before} sent that day (60 before the restart), {after} after midnight"
    )
    assert before == 100
    assert after == 50
    assert math.isclose(ledger.first_sent_at(cid.id) or 0, evening.timestamp(), abs_tol=30)


def test_status_shows_the_plans_eta(tmp_path: Path) -> None:
    """`mailpacer status` (no agent running, no config): the campaign's own level, its
    day cap seeded with what the ledger says was sent today."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    ledger.upgrade()
    settings = {"rate": "300/min", "pacing": {"per_day": 100}}
    cid = ledger.create_campaign("capped", sender="n@example.com", template_dir="-",
                                 settings=settings).id  # fmt: skip
    ledger.insert_recipients(
        cid, [{"email": f"s{i}@example.net", "email_key": f"s{i}@example.net",
               "source_row": i, "variables": "{}"} for i in range(150)],
    )  # fmt: skip
    ids = [c.id for c in ledger.claim(cid, "a", 60, now=time.time(), lease_seconds=60)]
    ledger.mark_sending(ids, "a", now=time.time())
    now = time.time()
    ledger.record([Outcome(i, RecipientState.SENT, 250, "ok", at=now) for i in ids])
    ledger.update_campaign(cid, status="running")
    out = io.StringIO()
    assert run_status(url, "capped", None, 10, as_json=True, out=out) == 0
    eta = json.loads(out.getvalue())["campaigns"][0]["eta_seconds"]
    today = datetime.fromtimestamp(now, ZoneInfo("UTC")).date()
    midnight = datetime.combine(today + timedelta(days=1), datetime.min.time(), ZoneInfo("UTC"))
    expected = midnight.timestamp() + 50 / 5 - now  # 40 today, 50 after midnight at 5/s
    print(f"\nstatus: per_day 100, 60 sent today, 90 left at 300/min: ETA {eta / 3600:.2f} h")
    assert abs(eta - expected) < 5
    ledger.dispose()


async def test_a_campaign_held_by_a_cap_does_not_poll_the_ledger(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """Every row claimed, the rest held by a day cap until midnight: the claimer looks
    again when outcomes arrive or after a wait growing to 5 s, not every 50 ms (which was
    20 database queries a second for as long as the cap held). Virtual clocks, 10 x."""
    mock_clock.rate = 10.0
    tomorrow = datetime.now(BERLIN).date() + timedelta(days=1)
    evening = datetime.combine(tomorrow, datetime.min.time(), BERLIN) + timedelta(
        hours=23, minutes=59
    )
    wall = TrioWallClock(evening.timestamp())
    config = parse_pacing({"timezone": "Europe/Berlin", "campaign": {"per_day": 10}})
    handler = InFlightHandler()
    with trio.fail_after(300):  # virtual: 30 s of real time
        async with serving_aiosmtpd(handler) as server:
            run = make_runner(
                tmp_path, server.url(), [f"c{i}@example.net" for i in range(20)],
                Pacer(config, wall=wall), pacing=config.campaign, wall=wall,
            )  # fmt: skip
            started = trio.current_time()
            result = await run.run()
            waited = trio.current_time() - started
    calls = run.ledger.calls
    print(f"\n20 recipients, per_day = 10 from 23:59: {waited:.0f} s, {calls} ledger calls")
    assert result.run.get("sent") == 20
    assert waited >= 59  # the second ten waited for midnight
    assert calls < 60  # polling every 50 ms would have made over 1,000

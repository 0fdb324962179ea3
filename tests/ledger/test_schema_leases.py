"""Schema migrations, expiring leases, dead agents, suppressions and the events outbox.

Every test runs on SQLite (a file) and on MariaDB (a throw-away database).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailpacer.ledger import CampaignState, Ledger, LedgerError, Outcome, RecipientState
from mailpacer.ledger.migrations import MIGRATIONS, SCHEMA_VERSION
from mailpacer.ledger.schema import recipients, schema_info

from .backends import BACKENDS, database_url

R = RecipientState
LEASE = 300.0


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as value:
        yield value


@pytest.fixture
def ledger(url: str) -> Iterator[Ledger]:
    db = Ledger(url)
    db.upgrade()
    yield db
    db.dispose()


@pytest.fixture
def cid(ledger: Ledger) -> int:
    return ledger.create_campaign("c", sender="n@example.org", template_dir="/t", settings={}).id


def add(ledger: Ledger, cid: int, emails: list[str]) -> None:
    ledger.insert_recipients(
        cid,
        [
            {"email": e, "email_key": e.lower(), "source_row": n + 2, "variables": "{}"}
            for n, e in enumerate(emails)
        ],
    )


def status_of(ledger: Ledger, cid: int) -> dict[str, str]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            sa.select(recipients.c.email, recipients.c.status).where(
                recipients.c.campaign_id == cid
            )
        ).all()
    return {str(e): str(s) for e, s in rows}


def tables(ledger: Ledger) -> set[str]:
    return set(sa.inspect(ledger.engine).get_table_names())


# -- migrations ------------------------------------------------------------------------


def test_fresh_database_gets_every_migration_in_order(url: str) -> None:
    db = Ledger(url)
    try:
        steps: list[int] = []
        assert db.upgrade(on_step=lambda n, _d: steps.append(n)) == SCHEMA_VERSION
        assert steps == [n for n, _, _ in MIGRATIONS]
        assert {"campaigns", "recipients", "suppressions", "events", "agents"} <= tables(db)
        assert db.upgrade(on_step=lambda n, _d: steps.append(n)) == SCHEMA_VERSION
        assert steps == [n for n, _, _ in MIGRATIONS]  # nothing ran twice
    finally:
        db.dispose()


def test_a_version_1_ledger_is_upgraded_keeping_its_data(url: str) -> None:
    old = Ledger(url)
    try:
        assert old.upgrade(target=1) == 1
        assert "suppressions" not in tables(old)
        cid = old.create_campaign("old", sender="a@example.org", template_dir="/t", settings={})
        add(old, cid.id, ["a@example.org", "b@example.org"])
        with old.engine.begin() as conn:  # as a version-1 agent left it
            conn.execute(
                recipients.update()
                .where(recipients.c.email == "a@example.org")
                .values(status="claimed", lease_owner="x", lease_expires=1.0)
            )
            # exactly as version 1 had it: campaigns.control came with version 3
            conn.execute(sa.text("ALTER TABLE campaigns DROP COLUMN control"))
    finally:
        old.dispose()
    new = Ledger(url)
    try:
        steps: list[int] = []
        assert new.upgrade(on_step=lambda n, _d: steps.append(n)) == SCHEMA_VERSION
        assert steps == list(range(2, SCHEMA_VERSION + 1))
        assert {"suppressions", "events", "agents"} <= tables(new)
        campaign = new.campaign_by_name("old")
        assert campaign is not None
        assert status_of(new, campaign.id) == {
            "a@example.org": "claimed",
            "b@example.org": "pending",
        }
        with new.engine.connect() as conn:
            assert conn.execute(sa.select(schema_info.c.version)).scalar_one() == SCHEMA_VERSION
    finally:
        new.dispose()


def test_a_newer_schema_is_refused(ledger: Ledger) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(schema_info.update().values(version=SCHEMA_VERSION + 5))
    with pytest.raises(LedgerError, match="newer than this mailpacer understands"):
        ledger.upgrade()


# -- leases ----------------------------------------------------------------------------


def test_leases_of_a_dead_agent_expire_and_are_reclaimed(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, ["a@x.org", "b@x.org", "c@x.org", "d@x.org"])
    dead = ledger.claim(cid, "far-host:1", 3, now=1000.0, lease_seconds=LEASE)
    ledger.mark_sending([dead[0].id], "far-host:1", now=1001.0)
    # the agent dies; before expiry nobody may take its rows
    assert ledger.reclaim_expired(cid, now=1000.0 + LEASE - 1) == {"released": 0, "uncertain": 0}
    live = ledger.claim(cid, "me:2", 10, now=1000.0 + LEASE - 1, lease_seconds=LEASE)
    assert [c.email for c in live] == ["d@x.org"]
    # after expiry: claimed -> pending (never on the wire), sending -> uncertain
    assert ledger.reclaim_expired(cid, now=1000.0 + LEASE + 1) == {"released": 2, "uncertain": 1}
    assert status_of(ledger, cid) == {
        "a@x.org": "uncertain",
        "b@x.org": "pending",
        "c@x.org": "pending",
        "d@x.org": "claimed",  # my lease, still valid
    }


def test_claim_sweeps_expired_leases_itself(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, ["a@x.org", "b@x.org"])
    gone = Ledger(ledger.url.render_as_string(hide_password=False))
    try:
        assert len(gone.claim(cid, "far-host:1", 2, now=1000.0, lease_seconds=LEASE)) == 2
    finally:
        gone.dispose()
    assert ledger.claim(cid, "me:2", 10, now=1000.0 + LEASE - 1, lease_seconds=LEASE) == []
    taken = ledger.claim(cid, "me:2", 10, now=1000.0 + LEASE + 40, lease_seconds=LEASE)
    assert sorted(c.email for c in taken) == ["a@x.org", "b@x.org"]


def test_recover_takes_rows_of_a_dead_local_process_at_once(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, ["a@x.org", "b@x.org", "c@x.org", "d@x.org"])
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    host = socket.gethostname()
    dead_owner = f"{host}:{child.stdout.strip()}"  # that process has exited
    alive_owner = f"{host}:{os.getpid()}"  # this test process: alive, not the recoverer
    (a, _b) = ledger.claim(cid, dead_owner, 2, now=1000.0, lease_seconds=LEASE)
    ledger.mark_sending([a.id], dead_owner, now=1000.0)
    ledger.claim(cid, alive_owner, 1, now=1000.0, lease_seconds=LEASE)
    ledger.claim(cid, "other-host:1", 1, now=1000.0, lease_seconds=LEASE)
    counts = ledger.recover(cid, f"{host}:999999999", now=1001.0)  # leases unexpired
    assert counts == {"released": 1, "uncertain": 1}
    assert status_of(ledger, cid) == {
        "a@x.org": "uncertain",
        "b@x.org": "pending",
        "c@x.org": "claimed",  # a live process of this host
        "d@x.org": "claimed",  # another host: only its lease expiry frees it
    }


def test_mark_sending_reports_lost_leases(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, ["a@x.org", "b@x.org"])
    ids = [c.id for c in ledger.claim(cid, "slow:1", 2, now=1000.0, lease_seconds=10)]
    ledger.reclaim_expired(cid, now=1011.0)
    ledger.claim(cid, "other:2", 1, now=1011.0, lease_seconds=10)
    assert ledger.mark_sending(ids, "slow:1", now=1012.0) == 0  # both leases are gone


def test_claim_records_the_agents_heartbeat(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, ["a@x.org"])
    ledger.claim(cid, "host-a:42", 1, now=500.0, lease_seconds=LEASE)
    ledger.claim(cid, "host-a:42", 1, now=505.0, lease_seconds=LEASE)  # < 10 s: not written
    (agent,) = ledger.list_agents()
    assert (agent["id"], agent["host"], agent["pid"]) == ("host-a:42", "host-a", 42)
    assert (agent["started_at"], agent["heartbeat"]) == (500.0, 500.0)
    ledger.heartbeat("host-a:42", 600.0)
    assert ledger.list_agents()[0]["heartbeat"] == 600.0


# -- suppressions and the outbox ----------------------------------------------------------


def test_suppressed_addresses_and_domains(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, ["ann@example.org", "bob@blocked.example", "cy@example.org", "dee@ok.org"])
    assert ledger.add_suppression("Ann@Example.org", reason="complaint", source="fbl", now=1.0)
    assert not ledger.add_suppression("ann@example.org", now=2.0)  # already there
    assert ledger.add_suppression("BLOCKED.example", reason="asked", now=1.0)
    (cy,) = [
        c
        for c in ledger.claim(cid, "a", 4, now=1.0, lease_seconds=LEASE)
        if c.email == "cy@example.org"
    ]
    ledger.record([Outcome(cy.id, R.DEFERRED, 451, "later", next_attempt_at=9.0, at=2.0)])
    ledger.recover(cid, None, now=3.0)
    ledger.add_suppression("cy@example.org", now=3.0)
    assert ledger.apply_suppressions(cid, now=4.0) == 3
    assert status_of(ledger, cid) == {
        "ann@example.org": "suppressed",
        "bob@blocked.example": "suppressed",
        "cy@example.org": "suppressed",
        "dee@ok.org": "pending",
    }
    with pytest.raises(LedgerError, match="cannot suppress"):
        ledger.add_suppression("not an address@", now=5.0)


def test_events_outbox_is_ordered_and_delivered_once(ledger: Ledger, cid: int) -> None:
    ledger.add_events(
        [(cid, None, "campaign.started", {"n": 1}), (cid, 7, "recipient.sent", {"code": 250})],
        now=10.0,
    )
    ledger.add_events([(cid, 8, "recipient.failed", {"reply": "550 no"})], now=11.0)
    pending = ledger.undelivered_events()
    assert [e["type"] for e in pending] == [
        "campaign.started",
        "recipient.sent",
        "recipient.failed",
    ]
    ids = [e["id"] for e in pending]
    assert ids == sorted(ids)
    assert pending[1]["payload"] == {"code": 250}
    assert json.loads(json.dumps(pending[2]["payload"])) == {"reply": "550 no"}
    assert ledger.mark_events_delivered(ids[:2], now=12.0) == 2
    assert ledger.mark_events_delivered(ids[:2], now=13.0) == 0
    assert [e["id"] for e in ledger.undelivered_events()] == ids[2:]


def test_two_agents_creating_the_same_campaign_get_the_same_one(ledger: Ledger) -> None:
    first = ledger.create_campaign("same", sender="a@x.org", template_dir="/t", settings={})
    again = ledger.create_campaign("same", sender="a@x.org", template_dir="/t", settings={})
    assert again == first
    with pytest.raises(LedgerError, match=r"already exists .* with another sender or template"):
        ledger.create_campaign("same", sender="b@x.org", template_dir="/t", settings={})


def test_an_agent_that_lost_its_lease_never_touches_the_new_holders_rows(
    ledger: Ledger, cid: int
) -> None:
    """A slow agent's lease expires and another agent takes the rows over: the slow one is
    told which rows it still holds, and its late outcomes (or releases) change nothing else."""
    add(ledger, cid, ["a@x.org", "b@x.org", "c@x.org"])
    ids = [c.id for c in ledger.claim(cid, "slow:1", 3, now=1000.0, lease_seconds=10)]
    ledger.reclaim_expired(cid, now=1011.0)
    taken = ledger.claim(cid, "other:2", 1, now=1011.0, lease_seconds=600)
    assert [c.email for c in taken] == ["a@x.org"]
    # all three leases are lost (b and c went back to pending, a to the other agent)
    assert ledger.mark_sending_ids(ids, "slow:1", now=1012.0) == []
    mine = [c.id for c in ledger.claim(cid, "slow:1", 2, now=1012.0, lease_seconds=600)]
    assert sorted(mine) == sorted(ids[1:])  # b and c, claimed again
    assert ledger.mark_sending_ids(ids, "slow:1", now=1013.0) == ids[1:]  # a is not its own
    # late outcomes of the slow agent: a release of a (lost) and a result for b (held)
    ledger.record(
        [Outcome(ids[0], R.PENDING, None, "released", attempted=False),
         Outcome(ids[1], R.SENT, 250, "250 ok")],
        owner="slow:1",
    )  # fmt: skip
    assert status_of(ledger, cid) == {"a@x.org": "claimed", "b@x.org": "sent", "c@x.org": "sending"}
    ledger.set_campaign_status(
        cid, CampaignState.PAUSED, allowed_from=tuple(CampaignState), control="pause"
    )
    assert ledger.mark_sending_ids([ids[0]], "other:2", now=1014.0) is None  # paused

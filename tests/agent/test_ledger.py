"""The ledger on SQLite (a file) and on MariaDB (a throw-away database): one behaviour.

Schema, dedup, claims, outcomes, crash recovery; the SQLite process lock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import trio

from mailpacer.ledger import (
    AsyncLedger,
    Ledger,
    LedgerError,
    LedgerInUseError,
    LedgerLock,
    Outcome,
    RecipientState,
    mask_url,
)
from mailpacer.ledger.migrations import SCHEMA_VERSION
from mailpacer.ledger.schema import recipients, schema_info

from ..ledger.backends import BACKENDS, database_url

R = RecipientState
LEASE = 300.0


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as value:
        yield value


@pytest.fixture
def ledger(url: str) -> Iterator[Ledger]:
    db = Ledger(url)
    assert db.upgrade() == SCHEMA_VERSION
    yield db
    db.dispose()


@pytest.fixture
def cid(ledger: Ledger) -> int:
    return ledger.create_campaign(
        "spring", sender="news@example.org", template_dir="/t", settings={"rate": "10/s"}
    ).id


def rows_for(emails: list[str], start_line: int = 2) -> list[dict[str, object]]:
    return [
        {
            "email": e,
            "email_key": e.lower(),
            "source_row": start_line + n,
            "variables": json.dumps({"email": e, "n": n}),
        }
        for n, e in enumerate(emails)
    ]


def add(ledger: Ledger, cid: int, count: int) -> None:
    assert ledger.insert_recipients(cid, rows_for([f"r{n}@example.org" for n in range(count)]))


def row(ledger: Ledger, rid: int) -> dict[str, object]:
    with ledger.engine.connect() as conn:
        found = conn.execute(sa.select(recipients).where(recipients.c.id == rid)).one()
    return dict(found._mapping)


def statuses(ledger: Ledger, cid: int) -> dict[str, int]:
    return {k: v for k, v in ledger.state_counts(cid).items() if v}


# -- schema and URLs ------------------------------------------------------------------------


def test_upgrade_is_idempotent_and_survives_reopen(url: str) -> None:
    first = Ledger(url)
    assert first.upgrade() == SCHEMA_VERSION
    assert first.upgrade() == SCHEMA_VERSION
    campaign = first.create_campaign("c", sender="a@example.org", template_dir="/t", settings={})
    first.insert_recipients(campaign.id, rows_for(["a@example.org"]))
    first.dispose()
    second = Ledger(url)
    try:
        assert second.upgrade() == SCHEMA_VERSION
        assert second.count_recipients(campaign.id) == 1
        with second.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(schema_info)).scalar() == 1
            if second.backend == "sqlite":
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        second.dispose()


def test_newer_schema_is_refused(ledger: Ledger) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(schema_info.update().values(version=SCHEMA_VERSION + 1))
    with pytest.raises(LedgerError, match="newer than this mailpacer understands"):
        ledger.upgrade()


def test_campaign_round_trip(ledger: Ledger, cid: int) -> None:
    campaign = ledger.campaign_by_id(cid)
    assert campaign is not None
    assert campaign == ledger.campaign_by_name("spring")
    assert campaign.settings == {"rate": "10/s"}
    assert campaign.status == "ready"
    ledger.update_campaign(cid, status="running", settings={"rate": "1/s"})
    updated = ledger.campaign_by_id(cid)
    assert updated is not None
    assert (updated.status, updated.settings) == ("running", {"rate": "1/s"})
    assert ledger.campaign_by_name("nope") is None
    assert [c.name for c in ledger.list_campaigns()] == ["spring"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nonsense", "invalid database URL 'nonsense'"),
        ("postgresql://u:s3cr3t@db/x", "unsupported database 'postgresql://u:***@db/x'"),
        ("mysql+pymysql://u:s3cr3t@db:notaport/x", "invalid database URL 'mysql+pymysql://u:***@"),
        ("mysql+nosuchdriver://u:s3cr3t@db/x", "cannot use database 'mysql+nosuchdriver://u:***@"),
        ("sqlite://", "needs a file"),
        ("sqlite:///:memory:", "needs a file"),
        ("sqlite:////nonexistent-dir/x/ledger.db", "directory '/nonexistent-dir/x' does not exist"),
    ],
)
def test_bad_urls_are_clear_and_never_show_the_password(url: str, expected: str) -> None:
    with pytest.raises(LedgerError) as info:
        Ledger(url)
    message = str(info.value)
    assert expected in message
    assert "s3cr3t" not in message


def test_mask_url() -> None:
    assert mask_url("mysql+pymysql://user:pw@host/db") == "mysql+pymysql://user:***@host/db"
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"
    assert mask_url("mysql://u:pw@h:bad/db") == "<invalid database URL>"


def test_unopenable_sqlite_file_is_a_ledger_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    db = Ledger(f"sqlite:///{tmp_path / 'dir.db'}")
    try:
        with pytest.raises(LedgerError, match="cannot open the ledger"):
            db.check()
        with pytest.raises(LedgerError, match="cannot prepare the ledger"):
            db.upgrade()
    finally:
        db.dispose()


# -- recipients -----------------------------------------------------------------------------


def test_insert_recipients_dedups_within_and_across_batches(ledger: Ledger, cid: int) -> None:
    assert ledger.insert_recipients(cid, []) == 0
    batch = rows_for(["a@example.org", "b@example.org", "A@Example.org"])
    assert ledger.insert_recipients(cid, batch) == 2
    assert ledger.insert_recipients(cid, rows_for(["b@example.org", "c@example.org"])) == 1
    assert ledger.count_recipients(cid) == 3
    other = ledger.create_campaign("other", sender="n@example.org", template_dir="/t", settings={})
    # the same address in another campaign is another recipient
    assert ledger.insert_recipients(other.id, rows_for(["a@example.org"])) == 1
    assert statuses(ledger, cid) == {"pending": 3}
    assert statuses(ledger, other.id) == {"pending": 1}


def test_claim_leases_pending_in_order_and_never_twice(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, 25)
    seen: list[int] = []
    now = 1000.0
    while batch := ledger.claim(cid, "agent-a", 10, now=now, lease_seconds=LEASE):
        assert len(batch) <= 10
        assert all(c.previous == R.PENDING for c in batch)
        seen.extend(c.id for c in batch)
    assert len(seen) == 25
    assert len(set(seen)) == 25
    assert seen == sorted(seen)
    assert ledger.claim(cid, "agent-b", 10, now=now, lease_seconds=LEASE) == []
    assert statuses(ledger, cid) == {"claimed": 25}
    first = row(ledger, seen[0])
    assert (first["lease_owner"], first["lease_expires"]) == ("agent-a", now + LEASE)


def test_claimed_fields(ledger: Ledger, cid: int) -> None:
    ledger.insert_recipients(cid, rows_for(["ann@example.org"], start_line=7))
    (claimed,) = ledger.claim(cid, "a", 5, now=1.0, lease_seconds=LEASE)
    assert claimed.email == "ann@example.org"
    assert json.loads(claimed.variables) == {"email": "ann@example.org", "n": 0}
    assert (claimed.attempts, claimed.source_row, claimed.first_attempt_at) == (0, 7, None)


def test_record_outcomes_in_a_batch(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, 4)
    ids = [c.id for c in ledger.claim(cid, "a", 4, now=100.0, lease_seconds=LEASE)]
    ledger.mark_sending(ids, "a", now=101.0)
    assert statuses(ledger, cid) == {"sending": 4}
    written = ledger.record(
        [
            Outcome(ids[0], R.SENT, 250, "250 2.0.0 queued as ABC", at=110.0),
            Outcome(ids[1], R.DEFERRED, 451, "451 4.7.1 try later", next_attempt_at=500.0, at=111),
            Outcome(ids[2], R.BOUNCED, 550, "550 5.1.1 no such user", at=112.0),
            Outcome(ids[3], R.PENDING, None, "connection lost", attempted=False, at=113.0),
        ]
    )
    assert written == 4
    assert ledger.record([]) == 0
    sent, deferred, bounced, released = (row(ledger, i) for i in ids)
    assert sent["status"] == "sent"
    assert (sent["attempts"], sent["last_code"], sent["sent_at"]) == (1, 250, 110.0)
    assert sent["last_reply"] == "250 2.0.0 queued as ABC"
    assert (sent["first_attempt_at"], sent["updated_at"]) == (110.0, 110.0)
    assert (sent["lease_owner"], sent["lease_expires"]) == (None, None)
    assert deferred["status"] == "deferred"
    assert (deferred["attempts"], deferred["next_attempt_at"], deferred["sent_at"]) == (
        1,
        500,
        None,
    )
    assert bounced["status"] == "bounced"
    assert bounced["last_reply"] == "550 5.1.1 no such user"
    assert released["status"] == "pending"
    assert (released["attempts"], released["first_attempt_at"]) == (0, None)
    assert statuses(ledger, cid) == {"sent": 1, "deferred": 1, "bounced": 1, "pending": 1}


def test_long_replies_are_truncated(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, 1)
    (claimed,) = ledger.claim(cid, "a", 1, now=1.0, lease_seconds=LEASE)
    ledger.record([Outcome(claimed.id, R.FAILED, 554, "x" * 10_000, at=2.0)])
    assert len(str(row(ledger, claimed.id)["last_reply"])) == 2000


def test_sent_recipient_is_never_claimed_or_rewritten(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, 2)
    ids = [c.id for c in ledger.claim(cid, "a", 2, now=1.0, lease_seconds=LEASE)]
    ledger.record([Outcome(i, R.SENT, 250, "ok", at=2.0) for i in ids])
    for later in (3.0, 1e9):
        assert ledger.claim(cid, "a", 10, now=later, lease_seconds=LEASE) == []
    assert ledger.recover(cid, None, now=5.0) == {"released": 0, "uncertain": 0}
    # a late or duplicate outcome cannot turn a sent recipient into something else
    ledger.record([Outcome(ids[0], R.DEFERRED, 451, "late", next_attempt_at=3.0, at=4.0)])
    assert row(ledger, ids[0])["status"] == "sent"
    assert row(ledger, ids[0])["attempts"] == 1
    assert ledger.claim(cid, "a", 10, now=1e9, lease_seconds=LEASE) == []


def test_deferred_waits_until_due_then_comes_first(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, 4)
    first = ledger.claim(cid, "a", 2, now=100.0, lease_seconds=LEASE)
    ledger.record(
        [
            Outcome(first[0].id, R.DEFERRED, 451, "later", next_attempt_at=200.0, at=100.0),
            Outcome(first[1].id, R.DEFERRED, 421, "later", next_attempt_at=150.0, at=100.0),
        ]
    )
    assert ledger.next_due(cid) == 150.0
    not_yet = ledger.claim(cid, "a", 10, now=149.0, lease_seconds=LEASE)
    assert [c.previous for c in not_yet] == [R.PENDING, R.PENDING]
    assert {c.id for c in not_yet}.isdisjoint({first[0].id, first[1].id})
    assert ledger.claim(cid, "a", 10, now=149.9, lease_seconds=LEASE) == []
    due = ledger.claim(cid, "a", 10, now=150.0, lease_seconds=LEASE)
    assert [(c.id, c.previous, c.attempts) for c in due] == [(first[1].id, R.DEFERRED, 1)]
    assert due[0].first_attempt_at == 100.0
    later = ledger.claim(cid, "a", 10, now=400.0, lease_seconds=LEASE)  # leases: to 449
    assert [c.id for c in later] == [first[0].id]
    assert ledger.next_due(cid) is None


def test_due_retries_are_claimed_before_fresh_recipients(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, 5)
    (one,) = ledger.claim(cid, "a", 1, now=1.0, lease_seconds=LEASE)
    ledger.record([Outcome(one.id, R.DEFERRED, 451, "x", next_attempt_at=2.0, at=1.0)])
    batch = ledger.claim(cid, "a", 2, now=3.0, lease_seconds=LEASE)
    assert [c.previous for c in batch] == [R.DEFERRED, R.PENDING]
    assert batch[0].id == one.id


def test_recover_after_crash(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, 6)
    claimed = ledger.claim(cid, "dead-agent", 6, now=1.0, lease_seconds=LEASE)
    ids = [c.id for c in claimed]
    ledger.mark_sending(ids[:2], "dead-agent", now=2.0)
    ledger.record([Outcome(ids[5], R.SENT, 250, "ok", at=3.0)])
    # the process dies here; a new one takes the whole SQLite ledger (owner=None)
    assert ledger.recover(cid, None, now=10.0) == {"released": 3, "uncertain": 2}
    assert statuses(ledger, cid) == {"pending": 3, "uncertain": 2, "sent": 1}
    uncertain = row(ledger, ids[0])
    assert "delivery unknown" in str(uncertain["last_reply"])
    assert (uncertain["lease_owner"], uncertain["lease_expires"]) == (None, None)
    # uncertain recipients are never handed out again; the released ones are
    again = ledger.claim(cid, "new-agent", 10, now=11.0, lease_seconds=LEASE)
    assert sorted(c.id for c in again) == sorted(ids[2:5])
    assert ledger.recover(cid, None, now=12.0) == {"released": 3, "uncertain": 0}


def test_recover_keeps_a_previous_reply(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, 1)
    (c,) = ledger.claim(cid, "a", 1, now=1.0, lease_seconds=LEASE)
    ledger.record([Outcome(c.id, R.DEFERRED, 451, "451 greylisted", next_attempt_at=2.0, at=1)])
    ledger.claim(cid, "a", 1, now=3.0, lease_seconds=LEASE)
    ledger.mark_sending([c.id], "a", now=3.0)
    ledger.recover(cid, None, now=4.0)
    reply = str(row(ledger, c.id)["last_reply"])
    assert reply.startswith("451 greylisted [agent stopped")


def test_recover_with_owner_leaves_live_leases_of_others(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, 3)
    (mine,) = ledger.claim(cid, "me", 1, now=100.0, lease_seconds=LEASE)
    (live,) = ledger.claim(cid, "other", 1, now=100.0, lease_seconds=LEASE)
    (stale,) = ledger.claim(cid, "gone", 1, now=100.0 - 2 * LEASE, lease_seconds=LEASE)
    assert ledger.recover(cid, "me", now=150.0) == {"released": 2, "uncertain": 0}
    assert row(ledger, mine.id)["status"] == "pending"
    assert row(ledger, stale.id)["status"] == "pending"
    assert row(ledger, live.id)["status"] == "claimed"


def test_mark_sending_only_touches_own_leases(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, 2)
    a, b = ledger.claim(cid, "a", 2, now=1.0, lease_seconds=LEASE)
    ledger.mark_sending([a.id, b.id], "someone-else", now=2.0)
    assert statuses(ledger, cid) == {"claimed": 2}
    ledger.mark_sending([], "a", now=2.0)
    ledger.mark_sending([a.id], "a", now=2.0)
    assert statuses(ledger, cid) == {"claimed": 1, "sending": 1}


def test_release_claimed_on_clean_shutdown(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, 3)
    mine = ledger.claim(cid, "a", 2, now=1.0, lease_seconds=LEASE)
    ledger.claim(cid, "b", 1, now=1.0, lease_seconds=LEASE)
    ledger.mark_sending([mine[0].id], "a", now=2.0)
    assert ledger.release_claimed(cid, "a") == 1
    assert statuses(ledger, cid) == {"pending": 1, "sending": 1, "claimed": 1}


def test_state_counts_lists_every_state(ledger: Ledger, cid: int) -> None:
    counts = ledger.state_counts(cid)
    assert set(counts) == {s.value for s in RecipientState}
    assert set(counts.values()) == {0}
    add(ledger, cid, 3)
    assert ledger.state_counts(cid)["pending"] == 3
    assert ledger.recipients_in(cid, ["pending"], limit=2)[0]["email"] == "r0@example.org"
    assert len(ledger.recipients_in(cid, ["pending"], limit=2)) == 2


async def test_async_ledger_runs_in_a_worker_thread(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, 3)
    async_ledger = AsyncLedger(ledger)
    # SQLite: one writer; MariaDB: as many threads as pooled connections (never more)
    assert async_ledger.limiter.total_tokens == (1 if ledger.backend == "sqlite" else 10)
    claimed = await async_ledger.run(ledger.claim, cid, "a", 10, now=1.0, lease_seconds=LEASE)
    assert len(claimed) == 3
    async with trio.open_nursery() as nursery:
        for c in claimed:
            nursery.start_soon(
                async_ledger.run, ledger.record, [Outcome(c.id, R.SENT, 250, "ok", at=2.0)]
            )
    assert statuses(ledger, cid) == {"sent": 3}


# -- one process per SQLite ledger -------------------------------------------------------


def test_lock_refuses_a_second_holder_until_released(db_path: Path) -> None:
    first = LedgerLock(db_path)
    second = LedgerLock(db_path)
    assert first.path == db_path.with_name("ledger.db.lock")
    with first:
        assert first.path.read_text() == str(os.getpid())
        with pytest.raises(LedgerInUseError) as info:
            second.acquire()
        message = str(info.value)
        assert f"pid {os.getpid()}" in message
        assert str(db_path) in message
    second.acquire()  # released: now it can be taken
    second.release()
    second.release()  # idempotent


LOCK_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mailpacer.ledger import LedgerLock
    lock = LedgerLock(Path(sys.argv[1]))
    lock.acquire()
    print("locked", flush=True)
    time.sleep(60)
    """
)


def test_lock_held_by_another_process_and_freed_when_it_dies(db_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(db_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LedgerInUseError, match=f"pid {holder.pid}"):
            LedgerLock(db_path).acquire()
    finally:
        holder.kill()  # no clean release: the kernel drops the flock
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    with LedgerLock(db_path) as lock:
        assert lock.path.read_text() == str(os.getpid())
    assert lock.path.read_text() == ""  # released: no stale pid left behind


# -- concurrent claimers -------------------------------------------------------------------


def test_two_ledgers_claiming_from_threads_never_share_one(ledger: Ledger, cid: int) -> None:
    """Three agents (three engines, three connection pools) race for the same campaign.

    Each pauses briefly after a claim, as a real agent does while it sends the batch: without
    that, SQLite's writer lock can let the thread that holds it re-take it every time, and one
    agent would (correctly, but uninterestingly) claim everything.
    """
    total = 3000
    ledger.insert_recipients(cid, rows_for([f"r{n}@example.org" for n in range(total)]))
    others = [Ledger(ledger.url.render_as_string(hide_password=False)) for _ in range(3)]
    claimed: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(others))

    def agent(name: str, db: Ledger) -> None:
        mine = claimed.setdefault(name, [])
        try:
            start.wait()
            while batch := db.claim(cid, name, 7, now=1000.0, lease_seconds=LEASE):
                mine.extend(c.id for c in batch)
                time.sleep(0.002)  # "sending" the batch
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [
        threading.Thread(target=agent, args=(f"agent-{n}", db)) for n, db in enumerate(others)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for db in others:
        db.dispose()
    assert not errors
    everything = [rid for ids in claimed.values() for rid in ids]
    assert len(everything) == total
    assert len(set(everything)) == total  # never the same recipient to two agents
    if ledger.engine.dialect.name == "mysql":
        # SKIP LOCKED lets claims run side by side. SQLite serialises writers, and its busy
        # handler does not queue them fairly, so there a starved agent is allowed.
        assert sum(1 for ids in claimed.values() if ids) >= 2  # they really raced
    with ledger.engine.connect() as conn:
        owners: dict[str, int] = dict(
            conn.execute(
                sa.select(recipients.c.lease_owner, sa.func.count()).group_by(
                    recipients.c.lease_owner
                )
            ).all()
        )
    assert owners == {name: len(ids) for name, ids in claimed.items()}


# -- what the pacer needs after a restart ------------------------------------------------


def test_sent_since_first_sent_and_remaining_by_domain(ledger: Ledger, cid: int) -> None:
    """Counts for seeding hour/day caps (sent at or after a time, also if it bounced
    later) and a ramp's day 0; what is left per domain for the ETA per domain group."""
    emails = ["a@Gmail.com", "b@gmail.com", "c@example.org", "d@example.org", "e@x.net"]
    assert ledger.insert_recipients(cid, rows_for(emails))
    other = ledger.create_campaign("other", sender="n@example.org", template_dir="/t", settings={})
    add(ledger, other.id, 2)
    assert ledger.count_sent_since(cid, 0.0) == 0
    assert ledger.first_sent_at(cid) is None
    assert ledger.remaining_by_domain(cid) == {"gmail.com": 2, "example.org": 2, "x.net": 1}
    ids = [c.id for c in ledger.claim(cid, "a", 5, now=100.0, lease_seconds=LEASE)]
    ledger.mark_sending(ids, "a", now=100.0)
    ledger.record(
        [
            Outcome(ids[0], R.SENT, 250, "ok", at=1000.0),
            Outcome(ids[1], R.SENT, 250, "ok", at=2000.0),
            Outcome(ids[2], R.SENT, 250, "ok", at=3000.0),
            Outcome(ids[3], R.DEFERRED, 451, "later", next_attempt_at=9e9, at=3500.0),
        ]
    )
    other_ids = [c.id for c in ledger.claim(other.id, "a", 2, now=100.0, lease_seconds=LEASE)]
    ledger.mark_sending(other_ids, "a", now=100.0)
    ledger.record([Outcome(i, R.SENT, 250, "ok", at=2500.0) for i in other_ids])
    assert ledger.mark_bounced(ids[1], "550 5.1.1 gone", now=4000.0) is not None
    assert ledger.count_sent_since(cid, 0.0) == 3
    assert ledger.count_sent_since(cid, 2000.0) == 2  # the bounced one was sent: it counts
    assert ledger.count_sent_since(cid, 2000.5) == 1
    assert ledger.count_sent_since(cid, 3000.5) == 0
    assert ledger.first_sent_at(cid) == 1000.0
    # left: the deferred one (example.org) and the one still claimed (x.net)
    assert ledger.remaining_by_domain(cid) == {"example.org": 1, "x.net": 1}

"""``/unsubscribe/TOKEN`` served for real (hypercorn's Trio worker on 127.0.0.1:0) over a
real ledger: SQLite and MariaDB for what is written, SQLite locked and a MariaDB that never
answers for the 503s."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import trio

from mailpacer.http import HealthState, OperatorApp, serve_http
from mailpacer.http.unsubscribe import UnsubscribeEndpoint
from mailpacer.ledger import AsyncLedger, Ledger
from mailpacer.ledger.states import CampaignState
from mailpacer.metrics import Metrics
from mailpacer.unsubscribe import UnsubscribeRecorder, UnsubscribeSettings, make_token

from ..ledger.backends import ledger_on_each_backend

__all__ = ["ledger_on_each_backend"]  # a fixture

SECRET = b"an-unsubscribe-secret-0123456789"
SETTINGS = UnsubscribeSettings("https://mail.example.com", SECRET, "bounces.example.com")
ONE_CLICK = {"content": b"List-Unsubscribe=One-Click"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass
class Served:
    client: httpx.AsyncClient
    ledger: Ledger
    recorder: UnsubscribeRecorder
    notified: list[float] = field(default_factory=list)


@asynccontextmanager
async def served(
    ledger: Ledger, *, timeout: float = 10.0, enabled: bool = True
) -> AsyncIterator[Served]:
    notified: list[float] = []
    recorder = UnsubscribeRecorder(
        AsyncLedger(ledger), report=True, on_events=lambda: notified.append(time.time())
    )
    endpoint = UnsubscribeEndpoint(SETTINGS, recorder, timeout=timeout) if enabled else None
    app = OperatorApp(HealthState(), Metrics(), unsubscribe=endpoint)
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve_http, app, "127.0.0.1:0"))
        async with httpx.AsyncClient(base_url=binds[0], timeout=20) as client:
            yield Served(client, ledger, recorder, notified)
        nursery.cancel_scope.cancel()


def seed(ledger: Ledger) -> tuple[int, int]:
    """Two unfinished campaigns that both list jane (pending), and a finished one."""
    ids = []
    for name in ("spring", "summer", "winter"):
        campaign = ledger.create_campaign(
            name, sender="n@example.com", template_dir="-", settings={}
        )
        ledger.insert_recipients(
            campaign.id,
            [{"email": e, "email_key": e.lower(), "source_row": n, "variables": "{}"}
             for n, e in enumerate(["Jane@Example.org", "bob@example.org"])],
        )  # fmt: skip
        ids.append(campaign.id)
    ledger.update_campaign(ids[1], status=CampaignState.RUNNING.value)
    ledger.update_campaign(ids[2], status=CampaignState.FINISHED.value)
    return ids[0], ids[1]


def states(ledger: Ledger) -> dict[tuple[int, str], str]:
    with ledger.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT campaign_id, email, status FROM recipients").all()
    return {(c, e): s for c, e, s in rows}


def events(ledger: Ledger) -> list[dict[str, object]]:
    return ledger.undelivered_events()


@pytest.fixture
def ledger(ledger_on_each_backend: Ledger) -> Ledger:
    return ledger_on_each_backend


async def test_get_shows_a_button_and_post_unsubscribes_once(ledger: Ledger) -> None:
    spring, summer = seed(ledger)
    token = make_token(SECRET, spring, "Jane@Example.org")
    with trio.fail_after(30):
        async with served(ledger) as s:
            page = await s.client.get(f"/unsubscribe/{token}")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert f'<form method="post" action="{token}">' in page.text
            assert "J…@Example.org" in page.text
            assert page.headers["cache-control"] == "no-store"
            head = await s.client.head(f"/unsubscribe/{token}")
            assert head.status_code == 200
            assert ledger.count_suppressions() == 0  # a link scanner's GET changes nothing
            assert events(ledger) == []

            done = await s.client.post(f"/unsubscribe/{token}", headers=FORM, **ONE_CLICK)
            assert done.status_code == 200, done.text
            assert "Unsubscribed" in done.text
            again = await s.client.post(
                f"/unsubscribe/{token}",
                files={"List-Unsubscribe": (None, "One-Click")},  # multipart, as RFC 8058 allows
            )
            assert again.status_code == 200
    [entry] = ledger.list_suppressions()
    assert (entry["kind"], entry["value"], entry["reason"], entry["source"]) == (
        "address",
        "jane@example.org",
        "unsubscribed",
        "campaign:spring",
    )
    rows = states(ledger)
    assert rows[(spring, "Jane@Example.org")] == "suppressed"  # ready
    assert rows[(summer, "Jane@Example.org")] == "suppressed"  # running
    assert rows[(spring + 2, "Jane@Example.org")] == "pending"  # finished: left alone
    assert rows[(spring, "bob@example.org")] == "pending"
    [event] = events(ledger)
    assert event["type"] == "recipient.unsubscribed"
    assert event["campaign_id"] == spring
    assert event["recipient_id"] is not None
    assert event["payload"] == {"email": "Jane@Example.org", "via": "https"}
    assert len(s.notified) == 1  # the reporter is told once
    assert s.recorder.recorded == 1


async def test_forged_or_malformed_tokens_write_nothing(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.upgrade()
    spring, _ = seed(ledger)
    token = make_token(SECRET, spring, "bob@example.org")
    forged = [
        make_token(b"somebody-else's-secret-012345678", spring, "bob@example.org"),
        token[:-2] + ("AA" if token[-2:] != "AA" else "BB"),
        make_token(SECRET, spring, "bob@example.org")[:-1],
        "not-a-token",
        "a%2F..%2F..%2Fetc",
        "x" * 5000,
    ]
    try:
        with trio.fail_after(30):
            async with served(ledger) as s:
                for bad in forged:
                    for method in ("GET", "POST"):
                        answer = await s.client.request(method, f"/unsubscribe/{bad}")
                        assert answer.status_code == 404, (method, bad)
                        assert answer.headers["content-type"].startswith("text/plain")
                        assert "Traceback" not in answer.text
                assert (await s.client.post("/unsubscribe/")).status_code == 404
                put = await s.client.put(f"/unsubscribe/{token}")
                assert put.status_code == 405
                assert put.headers["allow"] == "GET, HEAD, POST"
                big = await s.client.post(f"/unsubscribe/{token}", content=b"x" * 20_000)
                assert big.status_code == 413
            async with served(ledger, enabled=False) as s:
                off = await s.client.post(f"/unsubscribe/{token}", **ONE_CLICK)
                assert off.status_code == 404
        assert ledger.count_suppressions() == 0
        assert events(ledger) == []
        assert set(states(ledger).values()) == {"pending"}
    finally:
        ledger.dispose()


async def test_a_locked_ledger_answers_503_in_time_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}")
    ledger.upgrade()
    spring, _ = seed(ledger)
    token = make_token(SECRET, spring, "bob@example.org")
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        with trio.fail_after(30):
            async with served(ledger, timeout=1.0) as s:
                blocker.execute("BEGIN IMMEDIATE")  # another writer holds the database
                started = trio.current_time()
                answer = await s.client.post(f"/unsubscribe/{token}", **ONE_CLICK)
                assert answer.status_code == 503
                assert answer.headers["retry-after"] == "30"
                assert trio.current_time() - started < 4
                blocker.execute("ROLLBACK")
                # The abandoned write may still land; the retry is answered 200 either way.
                retried = await s.client.post(f"/unsubscribe/{token}", **ONE_CLICK)
                assert retried.status_code == 200
        [entry] = ledger.list_suppressions()
        assert entry["value"] == "bob@example.org"
        assert len(events(ledger)) == 1
    finally:
        blocker.close()
        ledger.dispose()


async def test_a_database_that_never_answers_gets_503_not_a_hang(tmp_path: Path) -> None:
    """A MariaDB "server" that accepts connections and never greets (a frozen one)."""
    hung: list[trio.SocketStream] = []

    async def accept_and_hold(stream: trio.SocketStream) -> None:
        hung.append(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, accept_and_hold, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        ledger = Ledger(f"mysql+pymysql://root@127.0.0.1:{port}/frozen", connect_timeout=2.0)
        token = make_token(SECRET, 1, "bob@example.org")
        with trio.fail_after(20):
            async with served(ledger, timeout=1.0) as s:
                started = trio.current_time()
                answer = await s.client.post(f"/unsubscribe/{token}", **ONE_CLICK)
                assert answer.status_code == 503
                assert "retry-after" in answer.headers
                assert trio.current_time() - started < 4
                # the page (GET) needs no database
                assert (await s.client.get(f"/unsubscribe/{token}")).status_code == 200
        with trio.move_on_after(5):  # let the abandoned connect give up before we go
            while ledger.engine.pool.checkedout():  # type: ignore[attr-defined]
                await trio.sleep(0.1)
        ledger.dispose()
        nursery.cancel_scope.cancel()
    assert hung


def test_ledger_unsubscribe_without_a_reporter_writes_no_event(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.upgrade()
    try:
        assert ledger.unsubscribe(999, "x@example.org", via="mailto", now=1.0)
        assert not ledger.unsubscribe(999, "X@example.org", via="https", now=2.0)
        [entry] = ledger.list_suppressions()
        assert entry["source"] == "campaign #999"  # a campaign this ledger does not know
        assert events(ledger) == []
        with ledger.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar() == 0
    finally:
        ledger.dispose()

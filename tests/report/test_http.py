"""ReportClient against the reference receiver (hypercorn) and against fault servers, all on
127.0.0.1; and the whole chain (ledger outbox -> scheduler -> httpx -> receiver) through
three outages and an agent restart."""

from __future__ import annotations

import gzip
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import trio
import trustme

from mailpacer.ledger import AsyncLedger, Ledger
from mailpacer.report import (
    Breaker,
    CampaignActivity,
    LedgerOutbox,
    OutboxEvent,
    ReportClient,
    ReportConfig,
    ReportScheduler,
    sign,
)
from mailpacer.report.protocol import build_document, encode

from .fakes import SECRET
from .servers import Switch, answer, fault_server, receiver

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "docs" / "report-protocol.schema.json").read_text()
)


def config(url: str, **overrides: Any) -> ReportConfig:
    return ReportConfig(url=url, secret=overrides.pop("secret", SECRET), **overrides)


def document(first: int = 1, count: int = 3, *, source: str = "agent-1") -> dict[str, Any]:
    events = [
        OutboxEvent(seq, "recipient.failed", 1, "spring", seq, {"code": 550, "reply": "no"}, 1.0)
        for seq in range(first, first + count)
    ]
    return build_document(
        source=source,
        first=first,
        last=first + count - 1,
        events=events,
        campaigns=[CampaignActivity("spring", 600, {"sent": 10, "failed": count}, id=1).to_wire()],
        sent_at=time.time(),
        backlog=count,
    )


async def test_a_report_is_delivered_stored_once_and_matches_the_schema(tmp_path: Path) -> None:
    doc = document(count=40)  # > 1 KB: gzip
    jsonschema.validate(doc, SCHEMA)
    async with receiver(tmp_path / "r.db") as r, ReportClient(config(r.url)) as client:
        assert (await client.post(doc)).ok
        again = await client.post(doc)  # a retry after a lost answer: accepted, nothing new
        assert again.ok
        assert r.store.event_seqs("agent-1") == list(range(1, 41))
        assert r.store.counters("agent-1") == {"spring": {"sent": 10, "failed": 40}}
    assert r.lines[0].startswith("agent-1 seq 1-40: 40 new events, 0 duplicates | spring")
    assert "0 new events, 40 duplicates (a retried request)" in r.lines[1]
    encoded = encode(doc, secret=SECRET, timestamp=time.time(), gzip_min=1024)
    assert encoded.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(encoded.body)) == doc
    small = encode(document(count=1), secret=SECRET, timestamp=time.time(), gzip_min=1024)
    assert "Content-Encoding" not in small.headers


async def test_wrong_secret_is_a_clear_failure_that_never_shows_the_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = b"the-receivers-other-secret-000"
    async with receiver(tmp_path / "r.db", secret=other) as r, ReportClient(config(r.url)) as c:
        attempt = await c.post(document())
        assert r.store.event_seqs("agent-1") == []
    assert not attempt.ok
    assert attempt.status == 401
    assert attempt.reason == "HTTP 401: signature rejected; check report.secret on both sides"
    assert r.lines == [
        "rejected a request from 127.0.0.1: bad signature: the agent and the receiver have "
        "different secrets (HTTP 401)"
    ]
    for text in [attempt.reason, *r.lines, caplog.text, repr(config(r.url))]:
        assert SECRET.decode() not in text
        assert other.decode() not in text


async def post_raw(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as http:
        return await http.post(url, content=body, headers=headers)


def signed(body: bytes, *, stamp: int | None = None, **extra: str) -> dict[str, str]:
    ts = str(int(time.time()) if stamp is None else stamp)
    return {"X-Mailpacer-Timestamp": ts, "X-Mailpacer-Signature": sign(SECRET, ts, body), **extra}


async def test_the_receiver_refuses_bad_requests_in_one_line(tmp_path: Path) -> None:
    good = json.dumps(document()).encode()
    async with receiver(tmp_path / "r.db") as r:
        cases: list[tuple[bytes, dict[str, str], int, str]] = [
            (good, {}, 401, "unsigned request"),
            (good, signed(good, stamp=int(time.time()) - 600), 401, "stale timestamp (+"),
            (good, signed(good, stamp=int(time.time()) + 600), 401, "stale timestamp (-"),
            (good + b" ", signed(good), 401, "bad signature"),
            (b"not json", signed(b"not json"), 400, "body is not JSON"),
            (b"\x1f\x8bxx", signed(b"\x1f\x8bxx", **{"Content-Encoding": "gzip"}), 400, "gzip"),
            (good, signed(good, **{"Content-Encoding": "br"}), 415, "Content-Encoding 'br'"),
            (b"[]", signed(b"[]"), 400, "invalid report: not a JSON object"),
        ]
        bad_doc = document()
        bad_doc["events"][0]["seq"] = 99
        raw = json.dumps(bad_doc).encode()
        cases.append((raw, signed(raw), 400, "events[0].seq 99 is outside the sequence range"))
        bomb = gzip.compress(b"0" * (80 * 1024 * 1024))
        cases.append((bomb, signed(bomb, **{"Content-Encoding": "gzip"}), 413, "inflated body"))
        for body, headers, status, message in cases:
            response = await post_raw(r.url, body, headers)
            assert response.status_code == status, (message, response.text)
            assert message in response.json()["error"]
        replay = signed(good)
        assert (await post_raw(r.url, good, replay)).status_code == 200
        response = await post_raw(r.url, good, replay)  # the very same signed request again
        assert response.status_code == 409
        assert "replayed" in response.json()["error"]
        async with httpx.AsyncClient(timeout=5) as http:
            assert (await http.get(r.url)).status_code == 405
            assert (await http.post(r.url.replace("/v1/progress", "/x"))).status_code == 404
        assert r.store.event_seqs("agent-1") == [1, 2, 3]
    assert all("\n" not in line for line in r.lines)


async def slow_answer(stream: trio.SocketStream, head: bytes) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100:
        await stream.send_all(bytes([byte]))
        await trio.sleep(1)


async def reset(stream: trio.SocketStream, head: bytes) -> None:
    stream.socket.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_LINGER,
                             b"\x01\x00\x00\x00\x00\x00\x00\x00")  # fmt: skip
    await stream.aclose()


async def garbage(stream: trio.SocketStream, head: bytes) -> None:
    await stream.send_all(b"\x00\xffSSH-2.0-definitely not http\r\n\r\n")


FAULTS = [
    (answer(500, b"oops"), None, "HTTP 500"),
    (answer(404, b"no"), None, "HTTP 404"),
    (answer(200, b"<html>ok</html>"), None, "HTTP 200 without an acknowledgement"),
    (answer(200, b'{"idempotency_key": "someone-else"}'), None, "without an acknowledgement"),
    (answer(302, b"", "Location: https://evil.example/steal"), None, "redirect to evil.example"),
    (answer(429, b"", "Retry-After: 120"), 120.0, "HTTP 429"),
    (answer(503, b"", "Retry-After: Wed, 21 Oct 2099 07:28:00 GMT"), 600.0, "HTTP 503"),
    (garbage, None, "RemoteProtocolError"),
    (reset, None, "Error"),
]


@pytest.mark.parametrize(("handler", "retry_after", "reason"), FAULTS)
async def test_faults_are_failed_attempts_with_a_reason(
    handler: Any, retry_after: float | None, reason: str
) -> None:
    async with fault_server(handler) as url, ReportClient(config(url)) as client:
        with trio.fail_after(10):
            attempt = await client.post(document())
    assert not attempt.ok
    assert reason in attempt.reason
    if retry_after == 600.0:
        assert attempt.retry_after is not None
        assert attempt.retry_after > 600  # an HTTP date far ahead (the scheduler caps it)
    else:
        assert attempt.retry_after == retry_after


async def test_one_byte_per_second_ends_at_the_request_deadline() -> None:
    slow = {"read_timeout": 5.0, "request_deadline": 3.0}
    async with fault_server(slow_answer) as url, ReportClient(config(url, **slow)) as client:
        start = trio.current_time()
        attempt = await client.post(document())
        elapsed = trio.current_time() - start
    assert not attempt.ok
    assert attempt.reason == "no complete answer within 3 s"
    assert 2.9 <= elapsed < 4.5


async def test_refused_connection_and_tls_errors(tmp_path: Path) -> None:
    async with fault_server(answer(200)) as url:
        pass  # closed: nothing listens on that port now
    async with ReportClient(config(url)) as client:
        attempt = await client.post(document())
    assert not attempt.ok
    assert "ConnectError" in attempt.reason
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    tls = {"certfile": str(tmp_path / "server.pem"), "keyfile": str(tmp_path / "server.pem")}
    async with receiver(tmp_path / "r.db", **tls) as r:
        assert r.url.startswith("https://")
        async with ReportClient(config(r.url)) as client:  # not trusting our test CA
            attempt = await client.post(document())
        assert not attempt.ok
        assert attempt.reason.startswith("TLS error: CERTIFICATE_VERIFY_FAILED")
        async with ReportClient(config(r.url, verify_tls=str(tmp_path / "ca.pem"))) as client:
            assert (await client.post(document())).ok
    async with receiver(tmp_path / "r2.db") as r:  # https:// to a plain-HTTP server
        async with ReportClient(config(r.url.replace("http://", "https://"))) as client:
            attempt = await client.post(document())
        assert attempt.reason.startswith("TLS error")


FAST = {
    "min_interval": 0.05,
    "backoff_base": 0.01,
    "backoff_cap": 0.2,
    "breaker_open_seconds": 0.3,
    "backlog_poll": 0.05,
    "speed_tiers": ((1e9, 0.1),),
    "detail": "all",
    "batch_size": 50,
}


async def test_three_outages_and_a_restart_over_real_http(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ledger outbox -> scheduler -> httpx -> receiver. Outages: the receiver stopped
    (connection refused), answering 500, then a wrong secret; then the agent restarts.
    The receiver ends with every event exactly once, in sequence; the outbox is empty."""
    caplog.set_level(logging.INFO, "mailpacer.report")
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.upgrade()
    cid = ledger.create_campaign(
        "spring", sender="a@example.org", template_dir="/t", settings={}
    ).id
    outbox = LedgerOutbox(AsyncLedger(ledger))
    activity = [CampaignActivity("spring", 600, {"sent": 0}, id=cid)]
    written = 0

    def write(n: int) -> None:
        nonlocal written
        items = [(cid, written + i + 1, "recipient.sent", {"n": written + i + 1}) for i in range(n)]
        ledger.add_events(items, now=time.time())
        written += n

    async def delivered_all(r: Any, source: str = "mailpacer") -> None:
        with trio.fail_after(20):
            while len(r.store.event_seqs(source)) < written:
                await trio.sleep(0.05)

    ledger.add_events([(cid, None, "campaign.started", {})], now=time.time())
    written = 1
    db = tmp_path / "receiver.db"
    try:
        async with trio.open_nursery() as agent:
            client = ReportClient(config("http://127.0.0.1:1/v1/progress", **FAST))
            async with receiver(db) as r:
                port = int(r.url.split(":")[2].split("/")[0])
                url = r.url
            # outage 1: nothing listens; the agent starts anyway
            client = ReportClient(config(url, **FAST))
            scheduler = ReportScheduler(client.config, outbox, client.post, lambda: activity)
            await agent.start(scheduler.run)
            write(120)
            with trio.fail_after(10):
                while scheduler.breaker is not Breaker.OPEN:
                    await trio.sleep(0.02)
            assert "ConnectError" in (scheduler.last_error or "")
            switch: Switch | None = None

            def wrap(app: Any) -> Switch:
                nonlocal switch
                switch = Switch(app)
                return switch

            async with receiver(db, port=port, wrap=wrap) as r:
                await delivered_all(r)
                assert switch is not None
                switch.status = 500  # outage 2
                write(130)
                with trio.fail_after(10):
                    while scheduler.consecutive_failures < 6:
                        await trio.sleep(0.02)
                switch.status = None
                await delivered_all(r)
            async with receiver(db, port=port, secret=b"rotated-on-one-side-only") as r:
                write(90)  # outage 3: the receiver's secret changed
                with trio.fail_after(10):
                    while scheduler.breaker is not Breaker.OPEN:
                        await trio.sleep(0.02)
                assert "signature rejected" in (scheduler.last_error or "")
                assert r.store.event_seqs("mailpacer")[-1] == written - 90
            agent.cancel_scope.cancel()  # the agent stops with 90 events undelivered
        await client.aclose()
        write(60)
        async with receiver(db, port=port) as r, trio.open_nursery() as agent:
            async with ReportClient(config(url, **FAST)) as client:  # the restarted agent
                restarted = ReportScheduler(client.config, outbox, client.post, lambda: activity)
                await agent.start(restarted.run)
                await delivered_all(r)
                with trio.fail_after(10):
                    while restarted.backlog.events:
                        await trio.sleep(0.02)
                agent.cancel_scope.cancel()
            seqs = r.store.event_seqs("mailpacer")
            events = r.store.events("mailpacer")
    finally:
        ledger.dispose()
    assert sorted(seqs) == list(range(1, written + 1))  # every event, exactly once
    assert [e["seq"] for e in events] == list(range(1, written + 1))
    assert events[0]["type"] == "campaign.started"
    assert events[5]["data"] == {"n": 6}  # seq 6, as the ledger wrote it
    assert restarted.breaker is Breaker.CLOSED
    assert "circuit breaker open" in caplog.text
    assert "circuit breaker closed" in caplog.text
    assert SECRET.decode() not in caplog.text

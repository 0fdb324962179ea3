"""Inbound bounces: VERP return paths, DSN parsing, and the listener recording a real DSN
sent over SMTP (smtplib) into a real SQLite ledger."""

from __future__ import annotations

import functools
import smtplib
import time
from pathlib import Path

import pytest
import trio

from mailpacer.bounces.dsn import parse_dsn
from mailpacer.bounces.listener import Bounce, BounceHandler, serve_bounces
from mailpacer.bounces.verp import Verp
from mailpacer.ledger.states import RecipientState as R
from mailpacer.ledger.store import Ledger, Outcome
from mailpacer.ledger.threaded import AsyncLedger

SECRET = b"0123456789abcdef-bounces"

DSN = """\
From: MAILER-DAEMON@mx.example.org (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B0UND"

--B0UND
Content-Type: text/plain

This is the mail system at host mx.example.org. Your message could not be delivered.

--B0UND
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org
Arrival-Date: Mon, 23 Nov 2026 10:00:00 +0000

Final-Recipient: rfc822; {rcpt}
Original-Recipient: rfc822;{rcpt}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.example.org
Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected:
    User unknown in virtual mailbox table

--B0UND
Content-Type: text/rfc822-headers

From: News <news@example.com>
To: {rcpt}
Subject: Welcome

--B0UND--
"""


def dsn(to: str, rcpt: str, action: str = "failed", status: str = "5.1.1") -> bytes:
    text = DSN.format(to=to, rcpt=rcpt, action=action, status=status)
    return text.replace("\n", "\r\n").encode()


def test_verp_round_trip_and_forgeries() -> None:
    verp = Verp("bounces.example.com", SECRET)
    address = verp.address(123456)
    assert address.startswith("bounce+2n9c-")
    assert address.endswith("@bounces.example.com")
    assert verp.recipient_id(address) == 123456
    assert verp.recipient_id(f"<{address.upper()}>") == 123456  # case and brackets
    forged = address.replace("2n9c", "2n9d")
    assert verp.recipient_id(forged) is None  # another recipient, old signature
    assert verp.recipient_id(address.replace("example.com", "example.net")) is None
    assert verp.recipient_id("postmaster@bounces.example.com") is None
    assert Verp("bounces.example.com", b"another-secret-0123").recipient_id(address) is None
    with pytest.raises(ValueError, match="16 bytes"):
        Verp("bounces.example.com", b"short")


def test_dsn_parsing() -> None:
    [report] = parse_dsn(dsn("bounce+x@b.example", "gone@example.org"))
    assert report.final_recipient == "gone@example.org"
    assert report.hard
    assert report.status == "5.1.1"
    assert "User unknown in virtual mailbox table" in report.diagnostic
    [delayed] = parse_dsn(dsn("b@x", "slow@example.org", "delayed", "4.4.1"))
    assert not delayed.hard
    assert parse_dsn(b"From: a@b\r\nSubject: out of office\r\n\r\nback monday\r\n") == []
    assert parse_dsn(b"\xff\xfe garbage") == []


def make_ledger(tmp_path: Path) -> tuple[Ledger, list[int]]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.upgrade()
    campaign = ledger.create_campaign("c", sender="n@example.com", template_dir="-", settings={})
    emails = ["ok@example.org", "gone@example.org"]
    ledger.insert_recipients(
        campaign.id,
        [{"email": e, "email_key": e, "source_row": n, "variables": "{}"}
         for n, e in enumerate(emails)],
    )  # fmt: skip
    ids = [c.id for c in ledger.claim(campaign.id, "t:1", 10, now=1.0, lease_seconds=60)]
    ledger.mark_sending(ids, "t:1", now=1.0)
    ledger.record([Outcome(i, R.SENT, 250, "250 ok") for i in ids])
    return ledger, ids


def deliver(port: int, sender: str, rcpts: list[str], data: bytes) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail(sender, rcpts, data)


async def test_listener_records_a_hard_bounce_and_suppresses_the_address(
    tmp_path: Path,
) -> None:
    ledger, (ok_id, gone_id) = make_ledger(tmp_path)
    verp = Verp("bounces.example.com", SECRET)
    async_ledger = AsyncLedger(ledger)
    send, receive = trio.open_memory_channel[Bounce](100)
    handler = BounceHandler(verp, send)

    async def recorder() -> None:
        async for bounce in receive:
            await async_ledger.run(
                ledger.mark_bounced, bounce.recipient_id, bounce.dsn.describe(), now=time.time()
            )

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_bounces, ("127.0.0.1", 0), handler)
        nursery.start_soon(recorder)
        return_path = verp.address(gone_id)
        refused = await trio.to_thread.run_sync(
            functools.partial(
                deliver, port, "", [return_path, "postmaster@bounces.example.com"],
                dsn(return_path, "gone@example.org"),
            )
        )  # fmt: skip
        assert set(refused) == {"postmaster@bounces.example.com"}  # not a return path of ours
        forged = verp.address(ok_id).replace("-", "-0", 1)[:-1]
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            await trio.to_thread.run_sync(
                functools.partial(deliver, port, "", [forged], dsn(forged, "ok@example.org"))
            )
        with trio.fail_after(10):
            while handler.hard < 1 or ledger.state_counts(1)["bounced"] < 1:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    counts = ledger.state_counts(1)
    assert counts == {**counts, "bounced": 1, "sent": 1}
    [row] = ledger.recipients_in(1, ["bounced"])
    assert row["email"] == "gone@example.org"
    assert "5.1.1" in row["last_reply"]
    # suppressed: the next campaign with that address skips it
    second = ledger.create_campaign("c2", sender="n@example.com", template_dir="-", settings={})
    ledger.insert_recipients(
        second.id,
        [{"email": "gone@example.org", "email_key": "gone@example.org", "source_row": 2,
          "variables": "{}"}],
    )  # fmt: skip
    assert ledger.apply_suppressions(second.id, now=time.time()) == 1

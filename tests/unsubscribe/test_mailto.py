"""``mailto:unsubscribe+TOKEN@domain``: the bounce listener (aiosmtpd, for real over SMTP
with smtplib) accepts valid tokens only and hands them to the same recorder as the HTTP
endpoint, into a real SQLite ledger."""

from __future__ import annotations

import functools
import smtplib
from pathlib import Path

import pytest
import trio

from mailpacer.bounces.listener import Bounce, BounceHandler, serve_bounces
from mailpacer.bounces.verp import Verp
from mailpacer.ledger import AsyncLedger, Ledger
from mailpacer.unsubscribe import (
    Unsubscribe,
    UnsubscribeRecorder,
    UnsubscribeSettings,
    make_token,
)

SECRET = b"an-unsubscribe-secret-0123456789"
DOMAIN = "bounces.example.com"
SETTINGS = UnsubscribeSettings("https://mail.example.com", SECRET, DOMAIN)
MESSAGE = b"From: jane@example.org\r\nSubject: unsubscribe\r\n\r\nplease\r\n"


def send(port: int, rcpts: list[str]) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail("jane@example.org", rcpts, MESSAGE)


async def test_mail_to_a_signed_address_unsubscribes_and_others_get_550(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.upgrade()
    campaign = ledger.create_campaign("spring", sender="n@example.com", template_dir="-",
                                      settings={})  # fmt: skip
    recorder = UnsubscribeRecorder(AsyncLedger(ledger), report=True)
    bounces_in, _bounces_out = trio.open_memory_channel[Bounce](10)
    requests_in, requests_out = trio.open_memory_channel[Unsubscribe](10)
    handler = BounceHandler(
        Verp(DOMAIN, b"a-verp-secret-0123456789"),
        bounces_in,
        unsubscribe=SETTINGS,
        unsubscribes=requests_in,
    )

    async def record() -> None:
        async for request in requests_out:
            await recorder.record(request)

    token = make_token(SECRET, campaign.id, "jane@example.org")
    valid = f"unsubscribe+{token}@{DOMAIN}"
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                port = await nursery.start(serve_bounces, ("127.0.0.1", 0), handler)
                nursery.start_soon(record)
                for bad in (
                    f"unsubscribe+{token.swapcase()}@{DOMAIN}",  # a folded token
                    f"unsubscribe+{make_token(b'x' * 32, campaign.id, 'a@b.example')}@{DOMAIN}",
                    f"unsubscribe+{token}@elsewhere.example",
                    f"unsubscribe@{DOMAIN}",
                ):
                    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                        await trio.to_thread.run_sync(send, port, [bad])
                    [(code, _)] = refused.value.recipients.values()
                    assert code == 550
                refused_some = await trio.to_thread.run_sync(
                    functools.partial(send, port, [valid, f"postmaster@{DOMAIN}"])
                )
                assert set(refused_some) == {f"postmaster@{DOMAIN}"}
                await trio.to_thread.run_sync(send, port, [valid.upper().replace(
                    token.upper(), token)])  # fmt: skip
                while recorder.recorded < 1 or handler.unsubscribed < 2:
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
        [entry] = ledger.list_suppressions()
        assert (entry["value"], entry["reason"], entry["source"]) == (
            "jane@example.org",
            "unsubscribed",
            "campaign:spring",
        )
        [event] = ledger.undelivered_events()
        assert event["payload"] == {"email": "jane@example.org", "via": "mailto"}
        assert handler.received == 2
    finally:
        ledger.dispose()


def test_without_a_mailto_domain_the_listener_takes_bounces_only() -> None:
    requests_in, _ = trio.open_memory_channel[Unsubscribe](1)
    bounces_in, _b = trio.open_memory_channel[Bounce](1)
    https_only = UnsubscribeSettings("https://mail.example.com", SECRET)
    handler = BounceHandler(
        Verp(DOMAIN, SECRET), bounces_in, unsubscribe=https_only, unsubscribes=requests_in
    )
    token = make_token(SECRET, 1, "jane@example.org")
    assert handler.unsubscribe is None
    assert handler._unsubscribe_request(f"unsubscribe+{token}@{DOMAIN}") is None

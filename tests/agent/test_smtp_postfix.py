"""The SMTP client against a real, private Postfix smtpd: STARTTLS, smtps, SASL AUTH, relay
restrictions, pipelining. Runs (never skips) when MAILPACER_REQUIRE_POSTFIX=1.

The fixture (tests/servers/postfix_smtpd.py) only lets SASL-authenticated clients send,
offers AUTH PLAIN LOGIN only after TLS, and delivers every recipient into one maildir.
"""

from __future__ import annotations

import email
import email.policy
from urllib.parse import quote

import pytest

from mailpacer.config import RelayConfig, parse_relay_url
from mailpacer.smtp import (
    Batch,
    Extensions,
    OutboundMessage,
    ResultKind,
    SendResult,
    SMTPAuthError,
    SMTPConnection,
    Stage,
    Timeouts,
    dot_stuff,
    open_relay,
)

from ..servers.postfix_smtpd import PostfixServer

SENDER = "bounces@sender.example"
TIMEOUTS = Timeouts.uniform(15)


@pytest.fixture
def postfix(postfix_smtpd: PostfixServer) -> PostfixServer:
    postfix_smtpd.clear()
    return postfix_smtpd


def relay_url(
    server: PostfixServer,
    scheme: str = "smtp+starttls",
    *,
    password: str | None = None,
    auth: bool = True,
    query: str = "",
) -> RelayConfig:
    port = server.smtps_port if scheme == "smtps" else server.port
    user = ""
    if auth:
        secret = server.password if password is None else password
        user = f"{quote(server.username, safe='')}:{quote(secret, safe='')}@"
    options = f"cafile={server.ca_pem_path}" + (f"&{query}" if query else "")
    return parse_relay_url(f"{scheme}://{user}{server.host}:{port}?{options}")


def build(n: int, *, recipient: str | None = None, body: str | None = None) -> OutboundMessage:
    rcpt = recipient or f"user{n}@example.net"
    text = (
        f"From: News <news@sender.example>\r\nTo: <{rcpt}>\r\nSubject: postfix {n}\r\n"
        f"Message-ID: <pf{n}@sender.example>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        + (body if body is not None else f"Hello {n}\r\n.a dotted line\r\n")
    )
    data = text.encode()
    return OutboundMessage(
        SENDER,
        rcpt,
        dot_stuff(data),
        len(data),
        eight_bit=not data.isascii(),
        smtputf8=not rcpt.isascii(),
        tag=n,
    )


async def send_all(connection: SMTPConnection, messages: list[OutboundMessage]) -> list[SendResult]:
    batch = Batch(messages)
    try:
        await connection.send(batch)
    finally:
        await connection.quit()
    return batch.finish("unexpected")


async def auth_refused(relay: RelayConfig) -> SMTPAuthError:
    """Connect expecting SMTPAuthError; a session that opens anyway is closed, then fails."""
    try:
        connection = await open_relay(relay, timeouts=TIMEOUTS)
    except SMTPAuthError as exc:
        return exc
    await connection.quit()
    pytest.fail(f"{relay.name}: authenticated although SMTPAuthError was expected")


def parse(raw: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


async def test_starttls_auth_plain_delivers(postfix: PostfixServer) -> None:
    connection = await open_relay(relay_url(postfix), timeouts=TIMEOUTS)
    assert connection.tls
    assert connection.authenticated
    assert connection.extensions.pipelining  # Postfix offers it: the pipelined path runs
    assert {"PLAIN", "LOGIN"} <= connection.extensions.auth_mechanisms
    results = await send_all(connection, [build(n) for n in range(3)])
    assert [r.kind for r in results] == [ResultKind.SENT] * 3
    assert all(r.reply is not None and "queued as" in r.reply.text for r in results)

    received = await postfix.wait_for_count_async(3)
    by_rcpt = {parse(raw)["Delivered-To"]: (raw, parse(raw)) for raw in received}
    assert sorted(by_rcpt) == [f"user{n}@example.net" for n in range(3)]
    raw, message = by_rcpt["user1@example.net"]
    assert message["Return-Path"] == f"<{SENDER}>"
    assert message["Subject"] == "postfix 1"
    assert message["Message-ID"] == "<pf1@sender.example>"
    assert message.get_content() == "Hello 1\n.a dotted line\n"
    # Postfix notes TLS + SASL ("ESMTPSA") and the authenticated user in its Received header.
    received_header = str(message["Received"])
    assert "with ESMTPSA" in received_header
    assert postfix.username in received_header
    assert raw.endswith(b"\n\nHello 1\n.a dotted line\n")  # unstuffed by Postfix, intact
    assert "improper command pipelining" not in postfix.maillog()


async def test_starttls_auth_login_delivers(postfix: PostfixServer) -> None:
    """Postfix offers PLAIN and LOGIN and the client prefers PLAIN; hide PLAIN to run the
    AUTH LOGIN dialogue against the real server."""
    plain = relay_url(postfix, auth=False)
    connection = await open_relay(plain, timeouts=TIMEOUTS)
    try:
        keywords = dict(connection.extensions.keywords)
        keywords["AUTH"] = "LOGIN"
        connection.extensions = Extensions(keywords)
        await connection.login(postfix.username, postfix.password)
        assert connection.authenticated
    except BaseException:
        await connection.quit()
        raise
    results = await send_all(connection, [build(7)])
    assert results[0].kind is ResultKind.SENT
    (raw,) = await postfix.wait_for_count_async(1)
    message = parse(raw)
    assert message["Delivered-To"] == "user7@example.net"
    assert "with ESMTPSA" in str(message["Received"])
    assert "sasl_method=LOGIN" in postfix.maillog()


async def test_smtps_implicit_tls_delivers(postfix: PostfixServer) -> None:
    assert postfix.smtps_port is not None
    connection = await open_relay(relay_url(postfix, "smtps"), timeouts=TIMEOUTS)
    assert connection.tls
    assert connection.authenticated
    results = await send_all(connection, [build(1), build(2)])
    assert [r.kind for r in results] == [ResultKind.SENT] * 2
    received = await postfix.wait_for_count_async(2)
    assert sorted(parse(raw)["Delivered-To"] for raw in received) == [
        "user1@example.net",
        "user2@example.net",
    ]
    assert all(parse(raw)["Return-Path"] == f"<{SENDER}>" for raw in received)


@pytest.mark.parametrize("scheme", ["smtp+starttls", "smtps"])
async def test_wrong_password_is_an_auth_error(postfix: PostfixServer, scheme: str) -> None:
    wrong = "Wrong-pass-77"
    relay = relay_url(postfix, scheme, password=wrong)
    error = await auth_refused(relay)
    text = str(error)
    assert text.startswith(f"{relay.name}: authentication failed: 535")
    assert f"{postfix.username}:***@" in text
    assert wrong not in text
    assert postfix.password not in text
    assert error.reply is not None
    assert error.reply.is_permanent
    assert error.reply.enhanced_status == "5.7.8"


async def test_without_auth_relay_access_is_denied(postfix: PostfixServer) -> None:
    """The fixture only accepts mail from authenticated clients: each recipient is refused at
    RCPT (permanent), the session survives (RSET), and nothing is delivered."""
    connection = await open_relay(relay_url(postfix, auth=False), timeouts=TIMEOUTS)
    assert connection.tls
    assert not connection.authenticated
    results = await send_all(connection, [build(1), build(2)])
    assert [r.kind for r in results] == [ResultKind.PERMANENT] * 2
    for result in results:
        assert result.stage is Stage.RCPT
        assert result.reply is not None
        assert result.reply.code == 554
        assert result.reply.enhanced_status == "5.7.1"
        assert "Recipient address rejected: Access denied" in result.reply.text
    assert postfix.count() == 0


async def test_auth_before_tls_is_not_possible(postfix: PostfixServer) -> None:
    """On the plain port Postfix offers AUTH only after STARTTLS: smtp:// with credentials is
    refused locally, and even when clear-text AUTH is allowed, nothing is offered to use."""
    relay = relay_url(postfix, "smtp")
    error = await auth_refused(relay)
    assert "refusing to send credentials without TLS" in str(error)
    relay = relay_url(postfix, "smtp", query="allow_plain_auth=true")
    error = await auth_refused(relay)
    assert str(error) == f"{relay.name}: server offers no AUTH PLAIN or LOGIN (offered: none)"


async def test_pipelined_campaign_with_a_bad_recipient(postfix: PostfixServer) -> None:
    """Fifty messages over one authenticated connection; one recipient Postfix refuses by
    syntax; the rest are all delivered, once each."""
    messages = [build(n) for n in range(50)]
    messages[20] = build(20, recipient="user20@[not-an-address")
    connection = await open_relay(relay_url(postfix), timeouts=TIMEOUTS)
    results = await send_all(connection, messages)
    kinds = [r.kind for r in results]
    assert kinds[20] is ResultKind.PERMANENT
    assert results[20].stage is Stage.RCPT
    assert kinds[:20] + kinds[21:] == [ResultKind.SENT] * 49
    received = await postfix.wait_for_count_async(49)
    delivered = sorted(parse(raw)["Delivered-To"] for raw in received)
    assert delivered == sorted(m.recipient for i, m in enumerate(messages) if i != 20)
    log = postfix.maillog()
    assert "improper command pipelining" not in log


async def test_smtputf8_recipient(postfix: PostfixServer) -> None:
    connection = await open_relay(relay_url(postfix), timeouts=TIMEOUTS)
    assert connection.extensions.smtputf8
    recipient = "jürgen.groß@exämple.test"
    results = await send_all(connection, [build(1, recipient=recipient, body="Grüße\r\n")])
    assert results[0].kind is ResultKind.SENT
    (raw,) = await postfix.wait_for_count_async(1)
    assert f"Delivered-To: {recipient}".encode() in raw
    assert "Grüße\n".encode() in raw

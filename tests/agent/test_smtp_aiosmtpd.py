"""The SMTP client against aiosmtpd over TCP on 127.0.0.1: TLS, AUTH, SMTPUTF8, SIZE, RSET.

aiosmtpd runs in the test's own Trio run through trio-asyncio (see
tests/servers/aiosmtpd_server.py); certificates come from a throw-away trustme CA.
"""

from __future__ import annotations

import ssl
from typing import TypeVar
from urllib.parse import quote

import pytest

from mailpacer.config import parse_relay_url
from mailpacer.smtp import (
    Batch,
    OutboundMessage,
    ResultKind,
    SendResult,
    SMTPAuthError,
    SMTPConnectError,
    SMTPConnection,
    Stage,
    Timeouts,
    dot_stuff,
    open_relay,
)

from ..servers.aiosmtpd_server import (
    HOSTNAME,
    AiosmtpdServer,
    RecordingHandler,
    TrustedCA,
    serving_aiosmtpd,
    trusted_ca,
)

__all__ = ["trusted_ca"]

SENDER = "campaign@sender.example"
USER = "alice"
PASSWORD = "wonder:Land/7@%"  # needs URL quoting: exercises the relay URL parser too
TIMEOUTS = Timeouts.uniform(10)
E = TypeVar("E", bound=Exception)


def build(n: int, body: bytes | None = None, *, recipient: str | None = None) -> OutboundMessage:
    rcpt = recipient or f"r{n}@example.net"
    data = f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: message {n}\r\n\r\n".encode() + (
        body if body is not None else f"Hello {n}\r\n.dot line\r\n".encode()
    )
    eight_bit = not data.isascii()
    return OutboundMessage(
        SENDER,
        rcpt,
        dot_stuff(data),
        len(data),
        eight_bit=eight_bit,
        smtputf8=not rcpt.isascii(),
        tag=n,
    )


def credentials(user: str = USER, password: str = PASSWORD) -> str:
    return f"{quote(user, safe='')}:{quote(password, safe='')}"


async def connect(url: str) -> SMTPConnection:
    return await open_relay(parse_relay_url(url), timeouts=TIMEOUTS, local_hostname="client.test")


async def refused(url: str, error: type[E]) -> E:
    """Connect expecting ``error``; a session that opens anyway is closed before failing."""
    try:
        connection = await connect(url)
    except error as exc:
        return exc
    await connection.quit()
    pytest.fail(f"{url}: connected although {error.__name__} was expected")


async def send_all(connection: SMTPConnection, messages: list[OutboundMessage]) -> list[SendResult]:
    batch = Batch(messages)
    try:
        await connection.send(batch)
    finally:
        await connection.quit()
    return batch.finish("unexpected")


def kinds(results: list[SendResult]) -> list[ResultKind]:
    return [r.kind for r in results]


# ----------------------------------------------------------------------------- TLS


async def test_starttls_with_cafile_delivers(trusted_ca: TrustedCA) -> None:
    handler = RecordingHandler()
    async with serving_aiosmtpd(
        handler, tls_context=trusted_ca.server_context(), require_starttls=True
    ) as server:
        connection = await connect(server.url("smtp+starttls", query=f"cafile={trusted_ca.ca_pem}"))
        assert connection.tls
        # The EHLO after TLS replaced the plaintext one: no STARTTLS offered any more.
        assert not connection.extensions.starttls
        assert connection.extensions.size_limit == 10 * 1024 * 1024
        results = await send_all(connection, [build(n) for n in range(3)])
    assert kinds(results) == [ResultKind.SENT] * 3
    assert [m.rcpt_tos for m in handler.messages] == [[f"r{n}@example.net"] for n in range(3)]
    assert all(m.tls and m.mail_from == SENDER for m in handler.messages)
    assert len({m.peer_port for m in handler.messages}) == 1
    assert handler.messages[0].content == (
        b"From: campaign@sender.example\r\nTo: r0@example.net\r\nSubject: message 0\r\n\r\n"
        b"Hello 0\r\n.dot line\r\n"
    )
    # Two EHLOs (before and after STARTTLS), then QUIT.
    assert handler.events == ["EHLO client.test", "EHLO client.test", "QUIT"]


@pytest.mark.parametrize("scheme", ["smtp+starttls", "smtps"])
async def test_certificate_is_verified_by_default(trusted_ca: TrustedCA, scheme: str) -> None:
    """The system trust store does not know the test CA: the handshake must fail, with an
    error naming the relay and the verification problem; verify=false skips the check."""
    handler = RecordingHandler()
    implicit = scheme == "smtps"
    async with serving_aiosmtpd(
        handler, tls_context=trusted_ca.server_context(), implicit_tls=implicit
    ) as server:
        url = server.url(scheme)
        error = await refused(url, SMTPConnectError)
        text = str(error)
        assert text.startswith(parse_relay_url(url).name + ": ")
        assert "TLS handshake failed" in text
        assert "certificate verify failed" in text
        assert "unable to get local issuer certificate" in text
        assert error.transient is False

        connection = await connect(server.url(scheme, query="verify=false"))
        assert connection.tls
        results = await send_all(connection, [build(1)])
    assert kinds(results) == [ResultKind.SENT]
    assert [m.rcpt_tos for m in handler.messages] == [["r1@example.net"]]
    assert handler.messages[0].tls


async def test_certificate_for_another_host_is_refused(trusted_ca: TrustedCA) -> None:
    """Trusted CA, but the certificate names another host: hostname verification fails."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trusted_ca.ca.issue_cert("mail.elsewhere.example").configure_cert(context)
    async with serving_aiosmtpd(RecordingHandler(), tls_context=context) as server:
        url = server.url("smtp+starttls", query=f"cafile={trusted_ca.ca_pem}")
        error = await refused(url, SMTPConnectError)
    text = str(error)
    assert "certificate verify failed" in text
    assert "IP address mismatch" in text
    assert error.transient is False


async def test_missing_cafile_is_a_clear_permanent_error(trusted_ca: TrustedCA) -> None:
    url = "smtp+starttls://127.0.0.1:1?cafile=/nonexistent/ca.pem"
    with pytest.raises(SMTPConnectError, match=r"cannot load CA file '/nonexistent/ca.pem'") as e:
        await connect(url)
    assert e.value.transient is False


async def test_implicit_tls_with_auth(trusted_ca: TrustedCA) -> None:
    handler = RecordingHandler(users={USER: PASSWORD})
    # aiosmtpd only knows about STARTTLS; on a TLS socket it must be told AUTH is fine.
    async with serving_aiosmtpd(
        handler,
        tls_context=trusted_ca.server_context(),
        implicit_tls=True,
        auth_require_tls=False,
    ) as server:
        connection = await connect(
            server.url("smtps", credentials(), query=f"cafile={trusted_ca.ca_pem}")
        )
        assert connection.tls
        assert connection.authenticated
        results = await send_all(connection, [build(1), build(2)])
    assert kinds(results) == [ResultKind.SENT] * 2
    assert [(m.tls, m.login) for m in handler.messages] == [(True, USER)] * 2


# ---------------------------------------------------------------------------- AUTH


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_auth_after_starttls(trusted_ca: TrustedCA, mechanism: str) -> None:
    handler = RecordingHandler(users={USER: PASSWORD})
    other = {"PLAIN": "LOGIN", "LOGIN": "PLAIN"}[mechanism]
    async with serving_aiosmtpd(
        handler,
        tls_context=trusted_ca.server_context(),
        require_starttls=True,
        auth_exclude_mechanism=[other],
    ) as server:
        connection = await connect(
            server.url("smtp+starttls", credentials(), query=f"cafile={trusted_ca.ca_pem}")
        )
        assert connection.extensions.auth_mechanisms == {mechanism}
        assert connection.authenticated
        results = await send_all(connection, [build(1)])
    assert kinds(results) == [ResultKind.SENT]
    assert handler.messages[0].login == USER
    assert f"AUTH {mechanism} ok" in handler.events


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_wrong_password_is_an_auth_error(trusted_ca: TrustedCA, mechanism: str) -> None:
    handler = RecordingHandler(users={USER: PASSWORD})
    other = {"PLAIN": "LOGIN", "LOGIN": "PLAIN"}[mechanism]
    async with serving_aiosmtpd(
        handler, tls_context=trusted_ca.server_context(), auth_exclude_mechanism=[other]
    ) as server:
        url = server.url(
            "smtp+starttls",
            credentials(password="not-the-Password-9"),
            query=f"cafile={trusted_ca.ca_pem}",
        )
        error = await refused(url, SMTPAuthError)
    assert not isinstance(error, SMTPConnectError)  # not a transient connection problem
    assert error.reply is not None
    assert error.reply.code == 535
    assert error.reply.is_permanent
    text = str(error)
    assert text.startswith(parse_relay_url(url).name + ": authentication failed: 535")
    assert "alice:***@" in text
    assert "not-the-Password-9" not in text
    assert f"AUTH {mechanism} failed" in handler.events
    assert handler.events[-1] == "QUIT"  # the session is ended politely
    assert handler.messages == []


async def test_auth_without_tls_refused_unless_allowed() -> None:
    """A server offering AUTH in clear text must not get the password unless the relay URL
    says allow_plain_auth=true."""
    handler = RecordingHandler(users={USER: PASSWORD})
    async with serving_aiosmtpd(handler, auth_require_tls=False) as server:
        assert "PLAIN" in (await _ehlo_auth(server))
        error = await refused(server.url("smtp", credentials()), SMTPAuthError)
        assert "refusing to send credentials without TLS" in str(error)
        assert PASSWORD not in str(error)
        assert not any(e.startswith("AUTH") for e in handler.events)

        connection = await connect(server.url("smtp", credentials(), query="allow_plain_auth=1"))
        assert connection.authenticated
        assert not connection.tls
        results = await send_all(connection, [build(1)])
    assert kinds(results) == [ResultKind.SENT]
    assert (handler.messages[0].tls, handler.messages[0].login) == (False, USER)


async def test_starttls_required_but_not_offered_fails(trusted_ca: TrustedCA) -> None:
    """smtp+starttls:// to a server without STARTTLS: never fall back to clear text."""
    handler = RecordingHandler(users={USER: PASSWORD})
    async with serving_aiosmtpd(handler, auth_require_tls=False) as server:
        url = server.url("smtp+starttls", credentials(), query=f"cafile={trusted_ca.ca_pem}")
        error = await refused(url, SMTPConnectError)
    assert error.transient is False
    assert str(error) == f"{parse_relay_url(url).name}: server does not offer STARTTLS"
    assert not any(e.startswith("AUTH") for e in handler.events)


async def _ehlo_auth(server: AiosmtpdServer) -> frozenset[str]:
    connection = await connect(server.url("smtp"))
    try:
        return connection.extensions.auth_mechanisms
    finally:
        await connection.quit()


# ------------------------------------------------------------- extensions and envelope


async def test_smtputf8_address_delivered_when_offered() -> None:
    handler = RecordingHandler()
    async with serving_aiosmtpd(handler, enable_SMTPUTF8=True) as server:
        connection = await connect(server.url())
        assert connection.extensions.smtputf8
        message = build(1, "Grüße\r\n".encode(), recipient="josé.müller@exämple.test")
        results = await send_all(connection, [message, build(2)])
    assert kinds(results) == [ResultKind.SENT] * 2
    first, second = handler.messages
    assert first.rcpt_tos == ["josé.müller@exämple.test"]
    assert first.smtputf8
    assert "SMTPUTF8" in first.mail_options
    assert "BODY=8BITMIME" in first.mail_options
    assert first.content.endswith("Grüße\r\n".encode())
    assert "SMTPUTF8" not in second.mail_options  # only where needed


async def test_smtputf8_address_refused_locally_when_not_offered() -> None:
    handler = RecordingHandler()
    async with serving_aiosmtpd(handler, enable_SMTPUTF8=False) as server:
        connection = await connect(server.url())
        assert not connection.extensions.smtputf8
        results = await send_all(connection, [build(1, recipient="josé@example.test"), build(2)])
    assert kinds(results) == [ResultKind.PERMANENT, ResultKind.SENT]
    assert results[0].stage is Stage.LOCAL
    assert "SMTPUTF8" in results[0].detail
    assert [m.rcpt_tos for m in handler.messages] == [["r2@example.net"]]


async def test_message_over_announced_size_refused_locally() -> None:
    handler = RecordingHandler()
    async with serving_aiosmtpd(handler, data_size_limit=50_000) as server:
        connection = await connect(server.url())
        assert connection.extensions.size_limit == 50_000
        big = build(2, b"y" * 60_000 + b"\r\n")
        small = [build(1), build(3)]
        results = await send_all(connection, [small[0], big, small[1]])
    assert kinds(results) == [ResultKind.SENT, ResultKind.PERMANENT, ResultKind.SENT]
    assert results[1].stage is Stage.LOCAL
    assert results[1].reply is None
    assert "at most 50000" in results[1].detail
    assert [m.rcpt_tos for m in handler.messages] == [["r1@example.net"], ["r3@example.net"]]
    assert handler.messages[0].mail_options == [f"SIZE={small[0].size}"]


async def test_multiline_ehlo_reply_parsed() -> None:
    handler = RecordingHandler(extra_ehlo=["X-MAILPACER-TEST alpha  beta", "PIPELINING", "DSN"])
    async with serving_aiosmtpd(handler, enable_SMTPUTF8=True, data_size_limit=123456) as server:
        connection = await connect(server.url())
        try:
            keywords = connection.extensions.keywords
            assert connection.esmtp
            assert keywords["SIZE"] == "123456"
            assert keywords["X-MAILPACER-TEST"] == "alpha  beta"
            assert {"8BITMIME", "SMTPUTF8", "PIPELINING", "DSN", "HELP"} <= set(keywords)
            assert HOSTNAME.upper() not in keywords  # the first line is no keyword
            assert connection.extensions.pipelining
            assert connection.extensions.size_limit == 123456
        finally:
            await connection.quit()


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lockstep"])
async def test_rejected_recipients_then_rset_and_the_rest_sent(pipelining: bool) -> None:
    refusals = {
        "r1@example.net": "550 5.1.1 <r1@example.net>: no such user",
        "r3@example.net": "450 4.2.1 <r3@example.net>: mailbox busy",
        "r4@example.net": "550 5.1.1 <r4@example.net>: no such user",
    }
    handler = RecordingHandler(
        reject_rcpt=refusals.get, extra_ehlo=["PIPELINING"] if pipelining else []
    )
    async with serving_aiosmtpd(handler) as server:
        connection = await connect(server.url())
        assert connection.extensions.pipelining is pipelining
        messages = [build(n) for n in range(7)]
        results = await send_all(connection, messages)
    assert kinds(results) == [
        ResultKind.SENT,
        ResultKind.PERMANENT,
        ResultKind.SENT,
        ResultKind.TRANSIENT,
        ResultKind.PERMANENT,
        ResultKind.SENT,
        ResultKind.SENT,
    ]
    for n in (1, 3, 4):
        result = results[n]
        assert result.stage is Stage.RCPT
        assert result.reply is not None
        assert str(result.reply) == refusals[f"r{n}@example.net"]
        assert result.reply.enhanced_status == refusals[f"r{n}@example.net"][4:9]
    # Every accepted message went through the same connection, each with its own envelope.
    assert [m.rcpt_tos for m in handler.messages] == [[f"r{n}@example.net"] for n in (0, 2, 5, 6)]
    assert len({m.peer_port for m in handler.messages}) == 1
    assert handler.events.count("RSET") == 3
    assert handler.events[-1] == "QUIT"

"""aiosmtpd hosted in Trio (through trio-asyncio, as ``mailpacer.sink`` does) for client tests.

Unlike the built-in sink, this one can do STARTTLS (``tls_context``), implicit TLS (an SSL
listening socket), AUTH with a fixed user table, reject chosen recipients, and add EHLO
lines; it records every accepted message with its envelope, TLS state and login, and the
commands that have no message of their own (RSET, QUIT, AUTH).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio_asyncio
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"
HOSTNAME = "aiosmtpd.mailpacer.test"


@dataclass(frozen=True)
class Accepted:
    """One message as aiosmtpd received it."""

    peer_port: int  # the client's port: equal for messages of one connection
    mail_from: str
    mail_options: list[str]
    rcpt_tos: list[str]
    content: bytes  # unstuffed, CRLF line ends, as the client sent it
    tls: bool
    login: str | None  # the authenticated user, if any
    smtputf8: bool


@dataclass
class RecordingHandler:
    """aiosmtpd handler: accept everything except what ``reject_rcpt`` refuses."""

    users: dict[str, str] = field(default_factory=dict)
    reject_rcpt: Callable[[str], str | None] | None = None  # address -> reply, or None
    extra_ehlo: list[str] = field(default_factory=list)  # e.g. ["PIPELINING", "X-FOO bar"]
    messages: list[Accepted] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # "RSET", "QUIT", "AUTH PLAIN ok" ...

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        self.events.append(f"EHLO {hostname}")
        *head, last = responses
        return [*head, *(f"250-{line}" for line in self.extra_ehlo), last]

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        refusal = self.reject_rcpt(address) if self.reject_rcpt else None
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.events.append("RSET")
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.events.append("QUIT")
        return "221 2.0.0 Bye"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        transport = server.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        auth = session.auth_data
        login = (
            auth.login.decode()
            if session.authenticated and isinstance(auth, LoginPassword)
            else None
        )
        peer = cast(tuple[str, int], session.peer)  # typed Optional[str], really (host, port)
        self.messages.append(
            Accepted(
                peer_port=peer[1],
                mail_from=envelope.mail_from or "",
                mail_options=list(envelope.mail_options),
                rcpt_tos=list(envelope.rcpt_tos),
                content=envelope.original_content or b"",
                tls=tls,
                login=login,
                smtputf8=envelope.smtp_utf8,
            )
        )
        return f"250 2.0.0 Ok: queued as {len(self.messages)}"

    def authenticator(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and self.users.get(auth_data.login.decode()) == auth_data.password.decode()
        )
        self.events.append(f"AUTH {mechanism} {'ok' if ok else 'failed'}")
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


@dataclass(frozen=True)
class AiosmtpdServer:
    host: str
    port: int
    handler: RecordingHandler

    def url(self, scheme: str = "smtp", userinfo: str = "", query: str = "") -> str:
        user = f"{userinfo}@" if userinfo else ""
        return f"{scheme}://{user}{self.host}:{self.port}{'?' + query if query else ''}"


@asynccontextmanager
async def serving_aiosmtpd(
    handler: RecordingHandler,
    *,
    tls_context: ssl.SSLContext | None = None,
    implicit_tls: bool = False,
    require_starttls: bool = False,
    auth_require_tls: bool = True,
    auth_exclude_mechanism: Iterable[str] = (),
    enable_SMTPUTF8: bool = False,
    data_size_limit: int | None = 10 * 1024 * 1024,
) -> AsyncIterator[AiosmtpdServer]:
    """Serve on a free 127.0.0.1 port inside the current Trio run until the block ends.

    With ``implicit_tls`` the listening socket itself is TLS (smtps); otherwise
    ``tls_context`` enables STARTTLS.
    """
    sessions: list[SMTP] = []
    async with trio_asyncio.open_loop() as loop:

        def factory() -> SMTP:
            protocol = SMTP(
                handler,
                loop=loop,
                hostname=HOSTNAME,
                tls_context=None if implicit_tls else tls_context,
                require_starttls=require_starttls,
                authenticator=handler.authenticator,
                auth_require_tls=auth_require_tls,
                auth_exclude_mechanism=list(auth_exclude_mechanism),
                enable_SMTPUTF8=enable_SMTPUTF8,
                data_size_limit=data_size_limit,
                timeout=30,
            )
            sessions.append(protocol)
            return protocol

        ssl_arg = tls_context if implicit_tls else None
        server = await trio_asyncio.aio_as_trio(loop.create_server)(factory, HOST, 0, ssl=ssl_arg)
        try:
            port = server.sockets[0].getsockname()[1]
            yield AiosmtpdServer(HOST, port, handler)
        finally:
            server.close()
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await trio_asyncio.aio_as_trio(server.wait_closed)()
                # Sessions a failed test left open (Python 3.11's wait_closed does not
                # wait for them): abort them (a TLS close would wait for the client's
                # close_notify), or their sockets leak as ResourceWarnings.
                for protocol in sessions:
                    if protocol.transport is not None:
                        cast(asyncio.Transport, protocol.transport).abort()
                while any(p.transport is not None for p in sessions):
                    await trio.sleep(0.005)


@dataclass(frozen=True)
class TrustedCA:
    """A trustme CA, its PEM file for ``?cafile=``, and a server context for 127.0.0.1."""

    ca: trustme.CA
    ca_pem: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(HOST, "localhost").configure_cert(context)
        return context


@pytest.fixture
def trusted_ca(tmp_path: Path) -> TrustedCA:
    ca = trustme.CA(organization_name="mailpacer aiosmtpd test CA")
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    return TrustedCA(ca, pem)

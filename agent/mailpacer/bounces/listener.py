"""The bounce listener: an SMTP server (aiosmtpd inside Trio via trio-asyncio) for the VERP
return paths of our messages and the mailto URIs of their List-Unsubscribe headers.

It accepts mail only for valid, signed return paths and ``unsubscribe+TOKEN@domain``
addresses with a valid token (``550`` for anything else), always accepts the message itself
(a bounce is never bounced), and hands every hard bounce (``failed``, 5.x.x) and every
unsubscribe to Trio tasks that record them. When those fall far behind, new mail is
answered ``451`` (the sending MTA retries later): nothing is dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio
import trio_asyncio
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailpacer.bounces.dsn import DsnRecipient, parse_dsn
from mailpacer.bounces.verp import Verp
from mailpacer.unsubscribe import Unsubscribe, UnsubscribeSettings, mailto_token

__all__ = ["Bounce", "BounceHandler", "serve_bounces"]

log = logging.getLogger("mailpacer.bounces")


@dataclass(frozen=True)
class Bounce:
    recipient_id: int
    dsn: DsnRecipient


class BounceHandler:
    def __init__(
        self,
        verp: Verp,
        sink: trio.MemorySendChannel[Bounce],
        *,
        unsubscribe: UnsubscribeSettings | None = None,
        unsubscribes: trio.MemorySendChannel[Unsubscribe] | None = None,
    ) -> None:
        """``unsubscribe`` (with a ``mailto_domain``) and ``unsubscribes``: also accept
        ``unsubscribe+TOKEN@mailto_domain`` and hand each valid request there."""
        self.verp = verp
        self.sink = sink
        self.unsubscribe = unsubscribe if unsubscribe and unsubscribe.mailto_domain else None
        self.unsubscribes = unsubscribes
        self.received = 0  # messages accepted
        self.hard = 0  # hard bounces handed over
        self.unsubscribed = 0  # unsubscribe requests handed over

    def _unsubscribe_request(self, address: str) -> Unsubscribe | None:
        settings = self.unsubscribe
        if settings is None or settings.mailto_domain is None or self.unsubscribes is None:
            return None
        token = mailto_token(address, settings.mailto_domain)
        return None if token is None else settings.read(token, via="mailto")

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.verp.recipient_id(address) is None and self._unsubscribe_request(address) is None:
            return "550 5.1.1 not a bounce or unsubscribe address of this sender"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reports = [r for r in parse_dsn(envelope.original_content or b"") if r.hard]
        bounces = []
        unsubscribes = []
        for rcpt in envelope.rcpt_tos:
            rid = self.verp.recipient_id(rcpt)
            if rid is not None and reports:
                bounces.append(Bounce(rid, reports[0]))
            request = self._unsubscribe_request(rcpt)
            if request is not None:
                unsubscribes.append(request)
        try:
            for bounce in bounces:
                self.sink.send_nowait(bounce)
            for request in unsubscribes:
                assert self.unsubscribes is not None  # a request needs the channel
                self.unsubscribes.send_nowait(request)
        except trio.WouldBlock:
            # A retried message hands over again what went through: both are idempotent.
            return "451 4.3.0 busy recording bounces; try again later"
        self.received += 1
        self.hard += len(bounces)
        self.unsubscribed += len(unsubscribes)
        return "250 2.0.0 OK"


async def serve_bounces(
    listen: tuple[str, int],
    handler: BounceHandler,
    *,
    hostname: str = "mailpacer",
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started`` reports the bound port."""
    host, port = listen
    bind_error: OSError | None = None
    async with trio_asyncio.open_loop() as loop:

        def factory() -> Any:
            return SMTP(handler, loop=loop, hostname=hostname, data_size_limit=10 * 1024 * 1024)

        try:
            server = await trio_asyncio.aio_as_trio(loop.create_server)(factory, host, port)
        except OSError as exc:
            bind_error = exc  # see sink.serve_sink: keep it catchable as OSError
        else:
            try:
                task_status.started(server.sockets[0].getsockname()[1])
                await trio.sleep_forever()
            finally:
                server.close()
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await trio_asyncio.aio_as_trio(server.wait_closed)()
    if bind_error is not None:
        raise bind_error

"""A Trio-native SMTP client built for campaigns: many messages per connection, pipelined.

With PIPELINING (RFC 2920) a message costs one round trip: its body is written together
with the next message's MAIL/RCPT/DATA. Servers without it are spoken to in lockstep.

Every message handed to :meth:`SMTPConnection.send` ends with exactly one
:class:`SendResult`; if the connection dies after the end-of-data dot was written and
before the reply arrived, that result is ``UNCERTAIN`` - never silently "not sent".
"""

from __future__ import annotations

import contextlib
import enum
import os
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from mailpacer.config import RelayConfig
from mailpacer.smtp.protocol import (
    Extensions,
    Reply,
    ReplyParser,
    SMTPProtocolError,
    auth_login_password,
    auth_login_start,
    auth_plain,
    data_command,
    ehlo_command,
    helo_command,
    mail_command,
    quit_command,
    rcpt_command,
    rset_command,
    starttls_command,
)

__all__ = [
    "Batch",
    "OutboundMessage",
    "ResultKind",
    "SMTPAuthError",
    "SMTPConnectError",
    "SMTPConnection",
    "SMTPConnectionLost",
    "SMTPError",
    "SendResult",
    "Stage",
    "Timeouts",
]


class SMTPError(Exception):
    """Base class of the client's errors."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class SMTPConnectError(SMTPError):
    """No usable session: connect, TLS, greeting or EHLO failed."""

    def __init__(self, message: str, reply: Reply | None = None, *, transient: bool = True):
        super().__init__(message, reply)
        self.transient = transient


class SMTPAuthError(SMTPError):
    """The relay refused our credentials (or offers no mechanism we may use)."""


class SMTPConnectionLost(SMTPError):
    """The session broke in the middle: EOF, reset, timeout or protocol garbage."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds per step; defaults are RFC 5321 4.5.3.2's minimums."""

    connect: float = 30.0
    greeting: float = 300.0
    ehlo: float = 300.0
    starttls: float = 120.0
    auth: float = 120.0
    mail: float = 300.0
    rcpt: float = 300.0
    data_init: float = 120.0
    data_block: float = 180.0
    data_end: float = 600.0
    rset: float = 120.0
    quit: float = 5.0

    @classmethod
    def uniform(cls, seconds: float) -> Timeouts:
        """The same limit for every step (tests, and relays known to be fast)."""
        return cls(*([seconds] * 12))


class ResultKind(enum.Enum):
    SENT = "sent"  # 2xx after the dot
    TRANSIENT = "transient"  # a 4xx reply: try again later
    PERMANENT = "permanent"  # a 5xx reply (or a local refusal): do not retry
    UNCERTAIN = "uncertain"  # dot written, no reply: may or may not have been accepted
    NOT_SENT = "not_sent"  # nothing committed: safe to send again, on any connection


class Stage(enum.Enum):
    LOCAL = "local"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    DOT = "dot"
    CONNECTION = "connection"


@dataclass(slots=True)
class OutboundMessage:
    """One message for one recipient, ready for the wire.

    ``payload`` is dot-stuffed and ends with CRLF.CRLF (see ``protocol.dot_stuff``);
    ``size`` is the unstuffed size, announced with SIZE=.
    """

    sender: str
    recipient: str
    payload: bytes
    size: int
    eight_bit: bool = False
    smtputf8: bool = False
    tag: object = None


@dataclass(slots=True)
class SendResult:
    message: OutboundMessage
    kind: ResultKind
    stage: Stage
    reply: Reply | None = None
    detail: str = ""
    elapsed: float = 0.0

    @property
    def reply_text(self) -> str:
        if self.reply is not None:
            return str(self.reply)
        return self.detail


@dataclass(slots=True)
class Batch:
    """Messages handed to one connection, and what became of each so far.

    The caller keeps the batch so that even if ``send`` is cancelled half-way, it can
    tell which messages were committed (dot written) and which were never started.
    """

    messages: Sequence[OutboundMessage]
    #: Asked before each new transaction: True stops the batch there (a pause or cancel
    #: takes effect between two messages, not after the whole batch); the rest NOT_SENT.
    halted: Callable[[Batch], bool] | None = None
    #: Transient (4xx) results so far: the caller may want to look at them before more.
    transient: int = 0
    results: list[SendResult | None] = field(default_factory=list)
    dot_written: list[bool] = field(default_factory=list)
    started_at: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.messages)
        self.results = [None] * n
        self.dot_written = [False] * n
        self.started_at = [0.0] * n

    def finish(self, detail: str) -> list[SendResult]:
        """Every message's result; the unresolved ones become UNCERTAIN or NOT_SENT."""
        now = trio.current_time()
        final: list[SendResult] = []
        for i, message in enumerate(self.messages):
            result = self.results[i]
            if result is None:
                started = self.started_at[i]
                elapsed = now - started if started else 0.0
                if self.dot_written[i]:
                    result = SendResult(
                        message, ResultKind.UNCERTAIN, Stage.DOT, None, detail, elapsed
                    )
                else:
                    result = SendResult(
                        message, ResultKind.NOT_SENT, Stage.CONNECTION, None, detail, elapsed
                    )
                self.results[i] = result
            final.append(result)
        return final


#: Direct descriptor calls that found the kernel ready before a session gives way.
_YIELD_EVERY = 16


class _Expect(enum.IntEnum):
    MAIL = 1
    RCPT = 2
    DATA = 3
    DOT = 4
    ABORT = 5
    RSET = 6


class _ServerClosing(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


def _kind_of(reply: Reply) -> ResultKind:
    if reply.is_positive:
        return ResultKind.SENT
    if reply.is_transient:
        return ResultKind.TRANSIENT
    return ResultKind.PERMANENT


class SMTPConnection:
    """One SMTP session over a Trio stream. Not safe for concurrent use by several tasks."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        local_hostname: str = "localhost",
        timeouts: Timeouts | None = None,
        receive_size: int = 65536,
    ) -> None:
        self._fd = -1
        self.stream = stream
        self.local_hostname = local_hostname
        self.timeouts = timeouts or Timeouts()
        self.extensions = Extensions.none()
        self.esmtp = False
        self.tls = isinstance(stream, trio.SSLStream)
        self.authenticated = False
        self.broken = False
        self.messages_sent = 0
        self.relay_name = ""  # set by open_relay: safe for logs and metric labels
        self.relay: RelayConfig | None = None  # set by the engine: for its relay pool
        self.max_messages = 0  # set by open_relay: 0 = no limit per connection
        self._parser = ReplyParser()
        self._receive_size = receive_size
        self._unyielded = 0
        self._reply_due = False
        self._step_scope: trio.CancelScope | None = None
        self._waiting = ("", 0.0)
        t = self.timeouts
        self._batch_timeout = max(t.mail, t.rcpt, t.data_init, t.data_block, t.data_end, t.rset)

    @property
    def stream(self) -> trio.abc.Stream:
        return self._stream

    @stream.setter
    def stream(self, stream: trio.abc.Stream) -> None:
        # Plain TCP: read and write the socket's descriptor directly (see _write_fd).
        self._stream = stream
        self._fd = stream.socket.fileno() if type(stream) is trio.SocketStream else -1

    # -- low level ---------------------------------------------------------------

    async def _write(self, data: bytes, seconds: float) -> None:
        try:
            scope = self._step_scope
            if scope is not None:
                self._arm(scope, seconds, "writing to the server")
                if self._fd >= 0:
                    await self._write_fd(data)
                else:
                    await self.stream.send_all(data)
            else:
                with trio.fail_after(seconds):
                    await self.stream.send_all(data)
        except trio.TooSlowError:
            self.broken = True
            raise SMTPConnectionLost(f"timed out after {seconds:g}s writing to server") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.broken = True
            raise SMTPConnectionLost(f"connection lost while writing: {exc}") from exc

    def _arm(self, scope: trio.CancelScope, seconds: float, what: str) -> None:
        """Inside send(), one cancel scope is the timer of every step.

        Moving a deadline costs more than a pipelined SMTP command, so within a batch every
        step gets the longest of the transaction timeouts (RFC 5321's values are minimums)
        and the deadline moves only when less than that remains: a stalled step times out
        after between ``batch_timeout`` and 1.5 times it.
        """
        now = trio.current_time()
        budget = self._batch_timeout
        if scope.deadline < now + budget:
            scope.deadline = now + 1.5 * budget
        self._waiting = (what, budget)

    # Trio's socket calls pass through the scheduler even when the kernel answers at
    # once (a checkpoint after every send and receive). Inside send() - where the step
    # scope is the timer - plain TCP sessions call the descriptor directly and give way
    # to the scheduler only when the kernel would block, or after _YIELD_EVERY calls
    # that did not, so one session never starves the others. This halves the client's
    # CPU per pipelined message (docs/performance.md). TLS streams take Trio's path.

    async def _write_fd(self, data: bytes) -> None:
        fd = self._fd
        view = memoryview(data)
        while view:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(fd)
                self._unyielded = 0
                continue
            view = view[written:]
        self._reply_due = True
        await self._maybe_yield()

    async def _read_fd(self) -> bytes:
        fd = self._fd
        if self._reply_due:
            # Just wrote: the reply is almost never there yet, and a failed read (an
            # exception) costs more than going straight to the wait.
            self._reply_due = False
            await trio.lowlevel.wait_readable(fd)
            self._unyielded = 0
        while True:
            try:
                data = os.read(fd, self._receive_size)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
                self._unyielded = 0
                continue
            except InterruptedError:  # pragma: no cover - PEP 475 retries these
                continue
            await self._maybe_yield()
            return data

    async def _maybe_yield(self) -> None:
        self._unyielded += 1
        if self._unyielded >= _YIELD_EVERY:
            self._unyielded = 0
            await trio.lowlevel.checkpoint()

    async def _receive(self) -> None:
        data: bytes | bytearray
        if self._fd >= 0 and self._step_scope is not None:
            data = await self._read_fd()
        else:
            data = await self.stream.receive_some(self._receive_size)
        if not data:
            self.broken = True
            raise SMTPConnectionLost("server closed the connection")
        self._parser.feed(data)

    async def read_reply(self, seconds: float) -> Reply:
        """Next reply: from the buffer if one is there, else from the network."""
        try:
            reply = self._parser.next_reply()
            if reply is not None:
                return reply
            scope = self._step_scope
            if scope is not None:
                self._arm(scope, seconds, "for a reply")
                while reply is None:
                    await self._receive()
                    reply = self._parser.next_reply()
                return reply
            with trio.fail_after(seconds):
                while reply is None:
                    await self._receive()
                    reply = self._parser.next_reply()
                return reply
        except trio.TooSlowError:
            self.broken = True
            raise SMTPConnectionLost(f"no reply within {seconds:g}s") from None
        except SMTPProtocolError as exc:
            self.broken = True
            raise SMTPConnectionLost(f"protocol error: {exc}") from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.broken = True
            raise SMTPConnectionLost(f"connection lost while reading: {exc}") from exc

    async def command(self, line: bytes, seconds: float) -> Reply:
        """Send one command and wait for its reply (lockstep)."""
        await self._write(line, seconds)
        return await self.read_reply(seconds)

    # -- session set-up ----------------------------------------------------------

    async def greet(self) -> Reply:
        try:
            reply = await self.read_reply(self.timeouts.greeting)
        except SMTPConnectionLost as exc:
            raise SMTPConnectError(f"no greeting: {exc}") from exc
        if reply.code != 220:
            self.broken = True
            raise SMTPConnectError(
                f"server refused the session: {reply}", reply, transient=not reply.is_permanent
            )
        return reply

    async def ehlo(self) -> Reply:
        """EHLO, falling back to HELO for servers that do not speak ESMTP."""
        try:
            reply = await self.command(ehlo_command(self.local_hostname), self.timeouts.ehlo)
            if reply.code == 250:
                self.esmtp = True
                self.extensions = Extensions.from_ehlo(reply)
                return reply
            if reply.code == 421:
                self.broken = True
                raise SMTPConnectError(f"server closing: {reply}", reply)
            reply = await self.command(helo_command(self.local_hostname), self.timeouts.ehlo)
        except SMTPConnectionLost as exc:
            raise SMTPConnectError(f"EHLO failed: {exc}") from exc
        if reply.code != 250:
            self.broken = True
            raise SMTPConnectError(
                f"server refused EHLO and HELO: {reply}", reply, transient=not reply.is_permanent
            )
        self.esmtp = False
        self.extensions = Extensions.none()
        return reply

    async def starttls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """Upgrade to TLS (RFC 3207) and say EHLO again, as the RFC requires."""
        if not self.extensions.starttls:
            raise SMTPConnectError("server does not offer STARTTLS", transient=False)
        try:
            reply = await self.command(starttls_command(), self.timeouts.starttls)
        except SMTPConnectionLost as exc:
            raise SMTPConnectError(f"STARTTLS failed: {exc}") from exc
        if reply.code != 220:
            raise SMTPConnectError(f"server refused STARTTLS: {reply}", reply)
        if self._parser.has_partial:
            # Bytes after the 220 would be plaintext injection (CVE-2011-0411 class).
            self.broken = True
            raise SMTPConnectError("server sent data after its STARTTLS reply", transient=False)
        tls_stream = trio.SSLStream(self.stream, context, server_hostname=server_hostname)
        try:
            with trio.fail_after(self.timeouts.starttls):
                await tls_stream.do_handshake()
        except trio.TooSlowError:
            self.broken = True
            raise SMTPConnectError("TLS handshake timed out") from None
        except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
            self.broken = True
            cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
            raise SMTPConnectError(
                f"TLS handshake failed: {cause or exc}", transient=False
            ) from exc
        self.stream = tls_stream
        self.tls = True
        self.extensions = Extensions.none()
        await self.ehlo()

    async def login(self, username: str, password: str, *, allow_plaintext: bool = False) -> None:
        """AUTH PLAIN (preferred) or LOGIN; refuses to send secrets in clear unless allowed."""
        if not self.tls and not allow_plaintext:
            raise SMTPAuthError(
                "refusing to send credentials without TLS "
                "(use smtps:// or smtp+starttls://, or allow_plain_auth=true)"
            )
        mechanisms = self.extensions.auth_mechanisms
        try:
            if "PLAIN" in mechanisms:
                reply = await self.command(auth_plain(username, password), self.timeouts.auth)
            elif "LOGIN" in mechanisms:
                reply = await self.command(auth_login_start(), self.timeouts.auth)
                if reply.code == 334:
                    reply = await self.command(auth_login_password(username), self.timeouts.auth)
                if reply.code == 334:
                    reply = await self.command(auth_login_password(password), self.timeouts.auth)
            else:
                offered = " ".join(sorted(mechanisms)) or "none"
                raise SMTPAuthError(f"server offers no AUTH PLAIN or LOGIN (offered: {offered})")
        except SMTPConnectionLost as exc:
            raise SMTPConnectError(f"AUTH failed: {exc}") from exc
        if reply.code != 235:
            raise SMTPAuthError(f"authentication failed: {reply}", reply)
        self.authenticated = True

    async def quit(self) -> None:
        """Say QUIT politely, then close; never raises and never waits long."""
        if not self.broken:
            with trio.move_on_after(self.timeouts.quit):
                with contextlib.suppress(SMTPError):
                    await self.command(quit_command(), self.timeouts.quit)
        await self.aclose()

    async def aclose(self) -> None:
        self.broken = True
        self._fd = -1
        with trio.move_on_after(1) as scope:
            scope.shield = True
            with contextlib.suppress(trio.BrokenResourceError, OSError):
                await self.stream.aclose()

    # -- sending -----------------------------------------------------------------

    def _local_refusal(self, message: OutboundMessage) -> str | None:
        limit = self.extensions.size_limit
        if limit is not None and message.size > limit:
            return f"message is {message.size} bytes, relay accepts at most {limit} (SIZE)"
        if message.smtputf8 and not self.extensions.smtputf8:
            return "address needs SMTPUTF8, which the relay does not offer"
        return None

    def _mail_line(self, message: OutboundMessage) -> bytes:
        ext = self.extensions
        return mail_command(
            message.sender,
            size=message.size if ext.size_limit is not None or "SIZE" in ext else None,
            body_8bit=message.eight_bit and ext.eightbitmime,
            smtputf8=message.smtputf8 and ext.smtputf8,
        )

    async def send(self, batch: Batch) -> None:
        """Send every message of ``batch``; results are filled into ``batch``.

        Per-message rejections are results, not exceptions. A broken connection raises
        :class:`SMTPConnectionLost`; :meth:`Batch.finish` then classifies what is left.
        """
        if self.broken:
            raise SMTPConnectionLost("connection is closed")
        with trio.CancelScope(deadline=trio.current_time() + 1.5 * self._batch_timeout) as scope:
            self._step_scope = scope
            try:
                if self.extensions.pipelining:
                    await self._send_pipelined(batch)
                else:
                    await self._send_lockstep(batch)
            except _ServerClosing as closing:
                self.broken = True
                await self.aclose()
                raise SMTPConnectionLost(
                    f"server closing the connection: {closing.reply}"
                ) from None
            finally:
                self._step_scope = None
        if scope.cancelled_caught:
            self.broken = True
            await self.aclose()
            what, seconds = self._waiting
            raise SMTPConnectionLost(f"timed out {what} (timeout {seconds:g}s)")

    def _resolve(
        self,
        batch: Batch,
        i: int,
        kind: ResultKind,
        stage: Stage,
        reply: Reply | None,
        detail: str = "",
    ) -> None:
        elapsed = trio.current_time() - batch.started_at[i]
        batch.results[i] = SendResult(batch.messages[i], kind, stage, reply, detail, elapsed)
        if kind is ResultKind.SENT:
            self.messages_sent += 1
        elif kind is ResultKind.TRANSIENT:
            batch.transient += 1

    def _check_closing(self, batch: Batch, i: int, stage: Stage, reply: Reply) -> None:
        if reply.code == 421:
            if i >= 0 and batch.results[i] is None:
                self._resolve(batch, i, ResultKind.TRANSIENT, stage, reply)
            raise _ServerClosing(reply)

    async def _send_lockstep(self, batch: Batch) -> None:
        t = self.timeouts
        halted = batch.halted
        for i, message in enumerate(batch.messages):
            if halted is not None and halted(batch):
                return
            batch.started_at[i] = trio.current_time()
            refusal = self._local_refusal(message)
            if refusal:
                self._resolve(batch, i, ResultKind.PERMANENT, Stage.LOCAL, None, refusal)
                continue
            reply = await self.command(self._mail_line(message), t.mail)
            self._check_closing(batch, i, Stage.MAIL, reply)
            if not reply.is_positive:
                self._resolve(batch, i, _kind_of(reply), Stage.MAIL, reply)
                continue
            reply = await self.command(rcpt_command(message.recipient), t.rcpt)
            self._check_closing(batch, i, Stage.RCPT, reply)
            if not reply.is_positive:
                self._resolve(batch, i, _kind_of(reply), Stage.RCPT, reply)
                await self._rset()
                continue
            reply = await self.command(data_command(), t.data_init)
            self._check_closing(batch, i, Stage.DATA, reply)
            if reply.code != 354:
                self._resolve(batch, i, _kind_of(reply), Stage.DATA, reply)
                await self._rset()
                continue
            batch.dot_written[i] = True
            await self._write(message.payload, t.data_block)
            reply = await self.read_reply(t.data_end)
            self._check_closing(batch, i, Stage.DOT, reply)
            self._resolve(batch, i, _kind_of(reply), Stage.DOT, reply)

    async def _rset(self) -> None:
        reply = await self.command(rset_command(), self.timeouts.rset)
        self._check_closing(Batch(()), -1, Stage.CONNECTION, reply)
        if not reply.is_positive:
            self.broken = True
            raise SMTPConnectionLost(f"RSET refused: {reply}")

    async def _send_pipelined(self, batch: Batch) -> None:
        t = self.timeouts
        messages = batch.messages
        count = len(messages)
        expect: deque[tuple[_Expect, int]] = deque()
        out: list[bytes] = []
        replies: dict[int, tuple[Reply | None, Reply | None]] = {}
        next_index = 0

        halted = batch.halted

        def queue_next_envelope() -> None:
            nonlocal next_index
            while next_index < count:
                if halted is not None and halted(batch):
                    return
                i = next_index
                next_index += 1
                message = messages[i]
                batch.started_at[i] = trio.current_time()
                refusal = self._local_refusal(message)
                if refusal:
                    self._resolve(batch, i, ResultKind.PERMANENT, Stage.LOCAL, None, refusal)
                    continue
                out.append(self._mail_line(message))
                out.append(rcpt_command(message.recipient))
                out.append(data_command())
                expect.append((_Expect.MAIL, i))
                expect.append((_Expect.RCPT, i))
                expect.append((_Expect.DATA, i))
                return

        timeout_of = {
            _Expect.MAIL: t.mail,
            _Expect.RCPT: t.rcpt,
            _Expect.DATA: t.data_init,
            _Expect.DOT: t.data_end,
            _Expect.ABORT: t.data_end,
            _Expect.RSET: t.rset,
        }
        queue_next_envelope()
        while out:
            await self._write(b"".join(out), t.data_block)
            out.clear()
            while expect:
                what, i = expect.popleft()
                reply = await self.read_reply(timeout_of[what])
                if what is _Expect.MAIL:
                    self._check_closing(batch, i, Stage.MAIL, reply)
                    replies[i] = (reply, None)
                elif what is _Expect.RCPT:
                    self._check_closing(batch, i, Stage.RCPT, reply)
                    replies[i] = (replies[i][0], reply)
                elif what is _Expect.DATA:
                    self._check_closing(batch, i, Stage.DATA, reply)
                    mail_reply, rcpt_reply = replies.pop(i)
                    assert mail_reply is not None
                    assert rcpt_reply is not None
                    envelope_ok = mail_reply.is_positive and rcpt_reply.is_positive
                    if reply.code == 354 and envelope_ok:
                        batch.dot_written[i] = True
                        out.append(messages[i].payload)
                        expect.append((_Expect.DOT, i))
                    else:
                        if not mail_reply.is_positive:
                            self._resolve(batch, i, _kind_of(mail_reply), Stage.MAIL, mail_reply)
                        elif not rcpt_reply.is_positive:
                            self._resolve(batch, i, _kind_of(rcpt_reply), Stage.RCPT, rcpt_reply)
                        else:
                            self._resolve(batch, i, _kind_of(reply), Stage.DATA, reply)
                        if reply.code == 354:
                            # The server wants a body although no recipient was accepted:
                            # send an empty one and discard the transaction.
                            out.append(b".\r\n")
                            expect.append((_Expect.ABORT, i))
                        if mail_reply.is_positive:
                            out.append(rset_command())
                            expect.append((_Expect.RSET, -1))
                    queue_next_envelope()
                    break  # a decision point: write what is queued
                elif what is _Expect.DOT:
                    self._check_closing(batch, i, Stage.DOT, reply)
                    self._resolve(batch, i, _kind_of(reply), Stage.DOT, reply)
                elif what is _Expect.ABORT:
                    self._check_closing(batch, -1, Stage.DOT, reply)
                else:  # RSET
                    self._check_closing(batch, -1, Stage.CONNECTION, reply)
                    if not reply.is_positive:
                        self.broken = True
                        raise SMTPConnectionLost(f"RSET refused: {reply}")

"""The SMTP client against Postfix's real smtp-sink over TCP on 127.0.0.1.

smtp-sink offers PIPELINING and dumps every transaction to a file, so these tests show what
a real server received: many messages over one connection, dot-stuffing undone intact, line
endings normalized, QUIT at the end, and no local SIZE refusal when no SIZE is announced.
"""

from __future__ import annotations

import email
import email.policy
import itertools
from pathlib import Path

import pytest
import trio

from mailpacer.config import parse_relay_url
from mailpacer.message.factory import StaticFactory
from mailpacer.smtp import (
    Batch,
    OutboundMessage,
    ResultKind,
    SMTPAuthError,
    SMTPConnection,
    Stage,
    Timeouts,
    dot_stuff,
    open_relay,
)

from ..servers.smtp_sink import SmtpSink, running_smtp_sink, smtp_sink

__all__ = ["smtp_sink"]

SENDER = "campaign@sender.example"
TIMEOUTS = Timeouts.uniform(10)


class CountingStream(trio.abc.Stream):
    """Counts the client's writes: pipelining shows as about one write per message."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def build(n: int, body: bytes | None = None, *, recipient: str | None = None) -> OutboundMessage:
    data = (
        f"From: {SENDER}\r\nTo: r{n}@example.net\r\nSubject: message {n}\r\n"
        f"Message-ID: <m{n}@sender.example>\r\n\r\n"
    ).encode() + (body if body is not None else f"Hello {n}\r\n".encode())
    return OutboundMessage(
        SENDER, recipient or f"r{n}@example.net", dot_stuff(data), len(data), tag=n
    )


async def connect(sink: SmtpSink, query: str = "") -> SMTPConnection:
    relay = parse_relay_url(sink.url + query)
    return await open_relay(relay, timeouts=TIMEOUTS, local_hostname="client.mailpacer.test")


def unwire(message: OutboundMessage) -> bytes:
    """What smtp-sink dumps for a message we sent: unstuffed, LF line ends."""
    payload = message.payload[: -len(b".\r\n")]
    unstuffed = payload.replace(b"\r\n..", b"\r\n.")
    if unstuffed.startswith(b".."):
        unstuffed = unstuffed[1:]
    return unstuffed.replace(b"\r\n", b"\n")


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lockstep"])
async def test_hundreds_of_messages_over_one_connection(tmp_path: Path, pipelining: bool) -> None:
    count = 300
    with running_smtp_sink(tmp_path, *(() if pipelining else ("-p",))) as sink:
        connection = await connect(sink)
        assert connection.extensions.pipelining is pipelining
        counter = CountingStream(connection.stream)
        connection.stream = counter
        messages = [build(n) for n in range(count)]
        batches = [Batch(messages[i : i + 100]) for i in range(0, count, 100)]
        for batch in batches:
            await connection.send(batch)
        results = [r for batch in batches for r in batch.finish("unexpected")]
        await connection.quit()

        assert [r.kind for r in results] == [ResultKind.SENT] * count
        assert all(r.stage is Stage.DOT and r.reply and r.reply.code == 250 for r in results)
        assert connection.messages_sent == count
        if pipelining:
            # Body of message n goes out with the envelope of message n+1: ~1 write each
            # (+1 per batch for the first envelope, +1 for QUIT).
            assert counter.writes <= count + len(batches) + 1
        else:
            assert counter.writes >= 4 * count  # MAIL, RCPT, DATA, body: one round trip each

        dumps = sink.wait_for_count(count)
        by_recipient = {d.recipients[0]: d for d in dumps}
        assert sorted(by_recipient) == sorted(m.recipient for m in messages)
        for message in messages:
            dumped = by_recipient[message.recipient]
            assert dumped.sender == SENDER
            assert dumped.helo == "client.mailpacer.test"
            assert dumped.content == unwire(message)

        commands = sink.commands()
        # One session: one EHLO, one QUIT at the very end, no RSET anywhere.
        assert [c.split()[0] for c in commands].count("EHLO") == 1
        assert commands[-1] == "QUIT"
        assert not any(c.startswith("RSET") for c in commands)


async def test_dot_stuffed_lines_arrive_intact(smtp_sink: SmtpSink) -> None:
    lines = [
        b".",
        b"..",
        b"...",
        b".leading dot",
        b"..two leading dots",
        b" .space then dot",
        b"",
        b".",
        b"last line before the end",
        b".",
    ]
    body = b"\r\n".join(lines) + b"\r\n"
    connection = await connect(smtp_sink)
    # A message can start with a dot too (a raw payload from outside: no headers at all).
    messages = [build(1, body), build(2, b".\r\n"), build(3, b"")]
    headless = b".starts with a dot\r\n.\r\n\r\n.."
    messages.append(OutboundMessage(SENDER, "r4@example.net", dot_stuff(headless), len(headless)))
    batch = Batch(messages)
    await connection.send(batch)
    await connection.quit()
    assert [r.kind for r in batch.finish("")] == [ResultKind.SENT] * 4

    dumps = {d.recipients[0]: d for d in smtp_sink.wait_for_count(4)}
    received = dumps["r1@example.net"].content
    assert received.split(b"\n\n", 1)[1] == b"\n".join(lines) + b"\n"
    parsed = email.message_from_bytes(received, policy=email.policy.default)
    assert parsed["Subject"] == "message 1"
    assert dumps["r2@example.net"].content.endswith(b"\n\n.\n")
    assert dumps["r3@example.net"].content.endswith(b"\n\n")
    assert dumps["r4@example.net"].content == b".starts with a dot\n.\n\n..\n"


async def test_line_endings_are_normalized(smtp_sink: SmtpSink, tmp_path: Path) -> None:
    """A prepared .eml with bare LF, bare CR and CRLF mixed goes out as CRLF lines; a dot
    after a bare LF is stuffed (else it would end DATA early and the rest become commands)."""
    eml = tmp_path / "mixed.eml"
    eml.write_bytes(
        b"From: campaign@sender.example\nTo: list@example.net\rSubject: mixed\r\n\n"
        b"unix line\nold mac line\rwindows line\r\n.\nQUIT\n.dot after LF\rend"
    )
    factory = StaticFactory(eml, envelope_sender=SENDER)
    messages = [factory.build(n, f"r{n}@example.net", {}) for n in range(3)]
    connection = await connect(smtp_sink)
    batch = Batch(messages)
    await connection.send(batch)
    await connection.quit()
    assert [r.kind for r in batch.finish("")] == [ResultKind.SENT] * 3

    dumps = smtp_sink.wait_for_count(3)
    assert sorted(d.recipients[0] for d in dumps) == [f"r{n}@example.net" for n in range(3)]
    for dumped in dumps:
        assert b"\r" not in dumped.content
        assert dumped.content == (
            b"From: campaign@sender.example\nTo: list@example.net\nSubject: mixed\n\n"
            b"unix line\nold mac line\nwindows line\n.\nQUIT\n.dot after LF\nend\n"
        )
    # The "QUIT" body line stayed in the body: exactly one real QUIT, at the end.
    commands = smtp_sink.commands()
    assert commands.count("QUIT") == 1
    assert commands[-1] == "QUIT"


async def test_quit_on_close(smtp_sink: SmtpSink) -> None:
    connection = await connect(smtp_sink)
    batch = Batch([build(1)])
    await connection.send(batch)
    await connection.quit()
    assert connection.broken  # closed: no further use
    with trio.fail_after(5):
        while "QUIT" not in smtp_sink.commands():
            await trio.sleep(0.01)
    assert [c.split()[0] for c in smtp_sink.commands()] == [
        "EHLO",
        "MAIL",
        "RCPT",
        "DATA",
        ".",
        "QUIT",
    ]


async def test_no_size_announced_means_no_local_size_refusal(smtp_sink: SmtpSink) -> None:
    """smtp-sink announces no SIZE: the client must neither send SIZE= nor refuse big mail."""
    connection = await connect(smtp_sink)
    assert "SIZE" not in connection.extensions
    assert connection.extensions.size_limit is None
    big = build(1, (b"x" * 998 + b"\r\n") * 3000)  # ~3 MB
    batch = Batch([big, build(2)])
    await connection.send(batch)
    await connection.quit()
    assert [r.kind for r in batch.finish("")] == [ResultKind.SENT] * 2
    dumps = {d.recipients[0]: d for d in smtp_sink.wait_for_count(2)}
    assert dumps["r1@example.net"].mail_args == f"<{SENDER}>"  # no SIZE=, no BODY=
    assert dumps["r1@example.net"].content == unwire(big)


async def test_eight_bit_body_announced_with_8bitmime(smtp_sink: SmtpSink) -> None:
    connection = await connect(smtp_sink)
    assert connection.extensions.eightbitmime
    body = "Grüße, café\r\n".encode()
    data = b"Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body
    message = OutboundMessage(SENDER, "r1@example.net", dot_stuff(data), len(data), eight_bit=True)
    batch = Batch([message])
    await connection.send(batch)
    await connection.quit()
    assert batch.finish("")[0].kind is ResultKind.SENT
    (dumped,) = smtp_sink.wait_for_count(1)
    assert dumped.mail_args == f"<{SENDER}> BODY=8BITMIME"
    assert dumped.content.endswith("Grüße, café\n".encode())


async def test_auth_without_tls_is_refused_locally(smtp_sink: SmtpSink) -> None:
    """smtp-sink offers AUTH PLAIN LOGIN in clear text; the client must not send the secret."""
    url = smtp_sink.url.replace("smtp://", "smtp://user:s3cret-pw@")
    relay = parse_relay_url(url)
    with pytest.raises(SMTPAuthError) as info:
        await open_relay(relay, timeouts=TIMEOUTS)
    text = str(info.value)
    assert "without TLS" in text
    assert relay.name in text
    assert "s3cret-pw" not in text
    with trio.fail_after(5):
        while "QUIT" not in smtp_sink.commands():
            await trio.sleep(0.01)
    assert not any(c.startswith("AUTH") for c in smtp_sink.commands())

    # Explicitly allowed, AUTH goes out in clear text. smtp-sink answers AUTH with "250 Ok"
    # instead of RFC 4954's 235, and only 235 counts as success.
    with pytest.raises(SMTPAuthError, match="authentication failed: 250") as info:
        await open_relay(parse_relay_url(url + "?allow_plain_auth=true"), timeouts=TIMEOUTS)
    assert "s3cret-pw" not in str(info.value)
    assert any(c.startswith("AUTH PLAIN ") for c in smtp_sink.commands())


# -- the direct-descriptor path (plain TCP inside send()) ------------------------------


async def test_plain_tcp_sessions_write_the_socket_directly_and_large_bodies_arrive(
    smtp_sink: SmtpSink,
) -> None:
    """A 3 MB body is more than the socket buffer takes at once: the direct path must wait
    for the socket and write the rest (partial writes), and the sink gets every byte."""
    connection = await connect(smtp_sink)
    assert connection._fd >= 0  # plain TCP: the fast path is in use
    line = b"0123456789" * 9 + b"\r\n"  # 92 bytes
    body = line * (3 * 1024 * 1024 // len(line))
    messages = [build(1, body), build(2), build(3, body)]
    batch = Batch(messages)
    await connection.send(batch)
    await connection.quit()
    assert [r.kind for r in batch.finish("")] == [ResultKind.SENT] * 3
    dumps = {d.recipients[0]: d for d in smtp_sink.wait_for_count(3)}
    for message in messages:
        assert dumps[message.recipient].content == unwire(message)


async def test_one_long_batch_never_starves_the_other_tasks(smtp_sink: SmtpSink) -> None:
    """Even when the kernel always has the reply ready, a session gives way to the
    scheduler every few messages: a ticker task sees the batch advance in small steps."""
    connection = await connect(smtp_sink)
    count = 400
    batch = Batch([build(n) for n in range(count)])
    seen: list[int] = []

    async def ticker(cancel: trio.CancelScope) -> None:
        with cancel:
            while True:
                seen.append(connection.messages_sent)
                await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        cancel = trio.CancelScope()
        nursery.start_soon(ticker, cancel)
        await connection.send(batch)
        cancel.cancel()
    await connection.quit()
    assert connection.messages_sent == count
    steps = [b - a for a, b in itertools.pairwise(seen)]
    print(f"{len(seen)} ticks during {count} messages; largest step {max(steps)} messages")
    assert max(steps) <= 16  # client._YIELD_EVERY


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lockstep"])
async def test_a_halted_batch_stops_between_two_transactions(
    tmp_path: Path, pipelining: bool
) -> None:
    """A pause asked for mid-batch: no new transaction starts, the ones begun finish, the
    rest are NOT_SENT (safe to send later), and the session is still good for more."""
    with running_smtp_sink(tmp_path, *(() if pipelining else ("-p",))) as sink:
        connection = await connect(sink)
        messages = [build(n) for n in range(30)]
        batch = Batch(messages, halted=lambda b: sum(1 for t in b.started_at if t) >= 7)
        await connection.send(batch)
        kinds = [r.kind for r in batch.finish("halted")]
        assert kinds == [ResultKind.SENT] * 7 + [ResultKind.NOT_SENT] * 23
        assert not any(batch.dot_written[7:])
        again = Batch(messages[7:])
        await connection.send(again)
        assert [r.kind for r in again.finish("")] == [ResultKind.SENT] * 23
        await connection.quit()
        dumps = sink.wait_for_count(30)
        assert sorted(d.recipients[0] for d in dumps) == sorted(m.recipient for m in messages)

"""The built-in sink (aiosmtpd inside Trio): in-process with our own client, and as the
``mailpacer sink`` command."""

from __future__ import annotations

import email
import email.policy
import signal
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from mailpacer.cli import main
from mailpacer.config import parse_relay_url
from mailpacer.sink import SinkInfo, read_maildir, serve_sink
from mailpacer.smtp import (
    Batch,
    OutboundMessage,
    ResultKind,
    SMTPConnection,
    Timeouts,
    dot_stuff,
    open_relay,
)

SENDER = "bounces@sender.example"
TIMEOUTS = Timeouts.uniform(10)
MAILPACER = [sys.executable, "-m", "mailpacer"]


def build(n: int, recipient: str | None = None) -> OutboundMessage:
    rcpt = recipient or f"user{n}@example.net"
    data = (
        f"From: news@sender.example\r\nTo: <{rcpt}>\r\nSubject: sink {n}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Hello {n}\r\n.dotted\r\nGrüße\r\n"
    ).encode()
    return OutboundMessage(
        SENDER,
        rcpt,
        dot_stuff(data),
        len(data),
        eight_bit=True,
        smtputf8=not rcpt.isascii(),
        tag=n,
    )


async def connect(host: str, port: int) -> SMTPConnection:
    return await open_relay(parse_relay_url(f"smtp://{host}:{port}"), timeouts=TIMEOUTS)


async def send(host: str, port: int, messages: list[OutboundMessage]) -> list[ResultKind]:
    connection = await connect(host, port)
    batch = Batch(messages)
    try:
        await connection.send(batch)
    finally:
        await connection.quit()
    return [r.kind for r in batch.finish("unexpected")]


async def test_sink_stores_counts_and_keeps_envelope(nursery: trio.Nursery, tmp_path: Path) -> None:
    store = tmp_path / "store" / "nested"  # created by the sink
    info: SinkInfo = await nursery.start(partial(serve_sink, "127.0.0.1", 0, store=store))
    assert info.port != 0
    messages = [build(1), build(2), build(3, "jürgen@exämple.test")]
    assert await send(info.host, info.port, messages) == [ResultKind.SENT] * 3

    assert info.handler.messages == 3
    assert info.handler.recipients == 3
    assert info.handler.bytes == sum(m.size for m in messages)
    stored = read_maildir(store)
    assert len(stored) == 3
    assert not list(store.glob(".*"))  # no temporary files left behind
    for message, raw in zip(messages, stored, strict=True):
        head = f"Return-Path: <{SENDER}>\r\nDelivered-To: {message.recipient}\r\n".encode()
        assert raw.startswith(head)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert parsed["Return-Path"] == f"<{SENDER}>"
        assert parsed["Delivered-To"] == message.recipient
        assert parsed["Subject"] == f"sink {message.tag}"
        assert parsed.get_content() == f"Hello {message.tag}\r\n.dotted\r\nGrüße\r\n"
        # Byte for byte what we sent (unstuffed), after the two added headers.
        assert raw[len(head) :] == message.payload[: -len(b".\r\n")].replace(b"\r\n..", b"\r\n.")


async def test_sink_without_store_only_counts(nursery: trio.Nursery, tmp_path: Path) -> None:
    info: SinkInfo = await nursery.start(partial(serve_sink, "127.0.0.1", 0))
    assert await send(info.host, info.port, [build(n) for n in range(5)]) == [ResultKind.SENT] * 5
    assert (info.handler.messages, info.handler.recipients) == (5, 5)
    # A second connection adds to the same counters.
    assert await send(info.host, info.port, [build(9)]) == [ResultKind.SENT]
    assert info.handler.messages == 6


async def _read_line(stream: trio.abc.ReceiveStream, seen: bytearray) -> bytes:
    while b"\n" not in seen:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise AssertionError(f"output ended before a full line: {bytes(seen)!r}")
        seen += chunk
    line, _, rest = bytes(seen).partition(b"\n")
    seen[:] = rest
    return line


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    out = bytearray()
    while chunk := await stream.receive_some(4096):
        out += chunk
    return bytes(out)


async def test_sink_command_serves_and_stops_on_sigint(tmp_path: Path) -> None:
    store = tmp_path / "mail"
    process = await trio.lowlevel.open_process(
        [*MAILPACER, "sink", "--listen", "127.0.0.1:0", "--store", str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        with trio.fail_after(15):
            line = (await _read_line(process.stdout, bytearray())).decode()
        prefix = "mailpacer sink listening on 127.0.0.1:"
        assert line.startswith(prefix), line
        port = int(line[len(prefix) :])
        assert port != 0
        assert await send("127.0.0.1", port, [build(1), build(2)]) == [ResultKind.SENT] * 2
        assert len(read_maildir(store)) == 2

        process.send_signal(signal.SIGINT)
        with trio.fail_after(2):
            stderr = await _read_all(process.stderr)
            returncode = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stdout.aclose()
        await process.stderr.aclose()
    assert returncode == 0, stderr
    assert b"Traceback" not in stderr
    assert stderr.decode().strip().splitlines()[-1] == "sink: stopped after 2 messages"
    with socket.socket() as probe:  # nothing listens there any more
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAILPACER, *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_sink_command_rejects_a_bad_listen_address() -> None:
    """As a real process: exit status 2 and one line on stderr, no traceback."""
    result = run_cli("sink", "--listen", "garbage")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr == "error: --listen 'garbage': expected HOST:PORT, e.g. 127.0.0.1:2525\n"


@pytest.mark.parametrize("listen", ["127.0.0.1:", ":2525", "127.0.0.1:99999", "127.0.0.1:port"])
def test_sink_listen_variants_rejected(listen: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The same path in-process (starting the CLI costs ~1.5 s of imports per process)."""
    assert main(["sink", "--listen", listen]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: --listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:2525\n"


def test_sink_command_reports_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("sink", "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    assert "address already in use" in line.lower()


async def test_a_store_that_fails_defers_cleanly_and_the_session_goes_on(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    import shutil

    store = tmp_path / "store"
    info: SinkInfo = await nursery.start(partial(serve_sink, "127.0.0.1", 0, store=store))
    connection = await connect(info.host, info.port)
    try:
        first = Batch([build(1)])
        await connection.send(first)
        shutil.rmtree(store)  # the disk "goes away" under the sink
        failing = Batch([build(2), build(3)])
        await connection.send(failing)
        store.mkdir()
        after = Batch([build(4)])
        await connection.send(after)  # same connection: no "503 nested MAIL"
    finally:
        await connection.quit()
    assert [r.kind for r in first.finish("-")] == [ResultKind.SENT]
    results = failing.finish("-")
    assert [r.kind for r in results] == [ResultKind.TRANSIENT] * 2
    assert "cannot store" in str(results[0].reply)
    assert [r.kind for r in after.finish("-")] == [ResultKind.SENT]
    assert info.handler.messages == 2

"""A built-in SMTP sink: aiosmtpd (asyncio) hosted inside Trio through trio-asyncio.

For demos and tests that need a real SMTP server without Postfix. It accepts every
message, counts it, and can keep each one as a file (with ``Return-Path`` and
``Delivered-To`` prepended, like a local delivery agent does). aiosmtpd costs ~1.2 ms of
CPU per message, so it caps around 800 msg/s: use Postfix's smtp-sink for load tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio_asyncio
from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["SinkHandler", "SinkInfo", "read_maildir", "serve_sink", "start_sink_process"]


@dataclass
class SinkHandler:
    """aiosmtpd handler: accept, count, optionally store."""

    store: Path | None = None
    messages: int = 0
    recipients: int = 0
    bytes: int = 0
    _files: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages += 1
        self.recipients += len(envelope.rcpt_tos)
        content = envelope.original_content or b""
        self.bytes += len(content)
        if self.store is not None:
            try:
                for rcpt in envelope.rcpt_tos:
                    head = f"Return-Path: <{envelope.mail_from}>\r\nDelivered-To: {rcpt}\r\n"
                    name = f"{self.messages:09d}-{len(self._files)}.eml"
                    tmp = self.store / ("." + name)
                    tmp.write_bytes(head.encode("utf-8") + content)
                    os.replace(tmp, self.store / name)
                    self._files.append(name)
            except OSError as exc:
                # A reply, not an exception: aiosmtpd then ends the transaction cleanly
                # (an exception leaves it open: the next MAIL gets "503 nested MAIL").
                self.messages -= 1
                self.recipients -= len(envelope.rcpt_tos)
                self.bytes -= len(content)
                return f"451 4.3.0 cannot store the message: {exc.strerror or exc}"
        return f"250 2.0.0 Ok: queued as {self.messages}"


@dataclass(frozen=True)
class SinkInfo:
    host: str
    port: int
    handler: SinkHandler


async def serve_sink(
    host: str = "127.0.0.1",
    port: int = 2525,
    *,
    store: Path | None = None,
    hostname: str = "sink.mailpacer.test",
    task_status: trio.TaskStatus[SinkInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started`` reports the bound port."""
    if store is not None:
        await trio.Path(store).mkdir(parents=True, exist_ok=True)
    handler = SinkHandler(store)
    bind_error: OSError | None = None
    async with trio_asyncio.open_loop() as loop:

        def factory() -> Any:
            return SMTP(
                handler,
                loop=loop,
                hostname=hostname,
                enable_SMTPUTF8=True,
                data_size_limit=50 * 1024 * 1024,
            )

        try:
            server = await trio_asyncio.aio_as_trio(loop.create_server)(factory, host, port)
        except OSError as exc:
            # Raised inside open_loop it would come out wrapped in its nurseries'
            # ExceptionGroups, and callers could not catch a busy port as OSError.
            bind_error = exc
        else:
            try:
                bound = server.sockets[0].getsockname()[1]
                task_status.started(SinkInfo(host, bound, handler))
                await trio.sleep_forever()
            finally:
                server.close()
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await trio_asyncio.aio_as_trio(server.wait_closed)()
    if bind_error is not None:
        raise bind_error


def read_maildir(store: Path) -> list[bytes]:
    """Messages kept by the sink, in arrival order."""
    return [p.read_bytes() for p in sorted(store.glob("*.eml"))]


def start_sink_process(store: Path) -> tuple[subprocess.Popen[str], int]:
    """``mailpacer sink`` as a child process on a free 127.0.0.1 port (demo and tests).

    Returns the process and its port; raises RuntimeError when it did not start.
    """
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailpacer",
            "sink",
            "--listen",
            "127.0.0.1:0",
            "--store",
            str(store),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        process.wait()
        raise RuntimeError(f"the sink did not start (it said {line.strip()!r})")
    return process, int(line.rsplit(":", 1)[1])

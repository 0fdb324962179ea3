"""Real servers on 127.0.0.1 for the report tests: the reference receiver under hypercorn,
and a raw socket server for faults a real receiver cannot produce on demand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from mailpacer.report import ReceiverApp, ReceiverStore, serve_receiver

from .fakes import SECRET


@dataclass
class Receiver:
    url: str
    app: ReceiverApp
    store: ReceiverStore
    lines: list[str]


class Switch:
    """ASGI middleware: pass through, or answer ``status`` (an outage of the main server)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.status: int | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.status is not None:
            body = b'{"error": "down for maintenance"}'
            await send({"type": "http.response.start", "status": self.status,
                        "headers": [(b"content-length", str(len(body)).encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


@asynccontextmanager
async def receiver(
    db: Path,
    *,
    secret: bytes = SECRET,
    port: int = 0,
    wrap: Callable[[ReceiverApp], Any] | None = None,
    **tls: str,
) -> AsyncIterator[Receiver]:
    lines: list[str] = []
    store = ReceiverStore(db)
    app = ReceiverApp(secret, store, on_progress=lines.append)
    try:
        async with trio.open_nursery() as nursery:
            urls: list[str] = await nursery.start(
                partial(serve_receiver, wrap(app) if wrap else app, f"127.0.0.1:{port}", **tls)
            )
            yield Receiver(urls[0] + "/v1/progress", app, store, lines)
            nursery.cancel_scope.cancel()
    finally:
        store.close()


Handler = Callable[[trio.SocketStream, bytes], Awaitable[None]]


async def _read_request(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        body += chunk
    return head


@asynccontextmanager
async def fault_server(handler: Handler) -> AsyncIterator[str]:
    """A raw TCP server that reads one HTTP request per connection and runs ``handler``."""

    async def serve_one(stream: trio.SocketStream) -> None:
        async with stream:
            head = await _read_request(stream)
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await handler(stream, head)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve_one, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"http://127.0.0.1:{port}/v1/progress"
        nursery.cancel_scope.cancel()


def answer(status: int, body: bytes = b"", *headers: str) -> Handler:
    async def handler(stream: trio.SocketStream, head: bytes) -> None:
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close",
                 *headers]  # fmt: skip
        await stream.send_all("\r\n".join(lines).encode() + b"\r\n\r\n" + body)

    return handler

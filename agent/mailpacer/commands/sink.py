"""`mailpacer sink`: the built-in SMTP sink as a foreground process."""

from __future__ import annotations

import signal
import sys
from functools import partial
from pathlib import Path

import trio

from mailpacer.commands import UsageError
from mailpacer.sink import SinkInfo, serve_sink

__all__ = ["parse_listen", "run_sink"]


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:2525")
    return host.strip("[]"), int(port)


async def _report(info: SinkInfo) -> None:
    last = -1
    while True:
        await trio.sleep(5)
        if info.handler.messages != last:
            last = info.handler.messages
            print(f"sink: {last:,} messages received", file=sys.stderr, flush=True)


async def _main(host: str, port: int, store: Path | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                info: SinkInfo = await nursery.start(partial(serve_sink, host, port, store=store))
            except OSError as exc:
                raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
            print(f"mailpacer sink listening on {info.host}:{info.port}", flush=True)
            nursery.start_soon(_report, info)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()
    print(f"sink: stopped after {info.handler.messages:,} messages", file=sys.stderr)


def run_sink(listen: str, store: Path | None) -> int:
    host, port = parse_listen(listen)
    try:
        trio.run(_main, host, port, store)
    except BaseExceptionGroup as group:
        usage, rest = group.split(UsageError)
        if usage is not None and rest is None:
            raise usage.exceptions[0] from None
        raise
    return 0

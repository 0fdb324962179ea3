"""Serve the operator app with hypercorn's Trio worker, as a structured-concurrency service."""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from mailpacer.http.app import OperatorApp

__all__ = ["serve_http"]


async def serve_http(
    app: OperatorApp,
    bind: str,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``bind`` (``host:port``; port 0 picks one) until cancelled.

    The app's background monitors (database probe, host state, event-loop lag) run beside
    the server, so everything the endpoints answer is already in memory.
    """
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("mailpacer.http")
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 5.0
    config.h11_max_incomplete_size = 16 * 1024
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app.run_monitors)
        await serve(app, config, mode="asgi", task_status=task_status)  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()

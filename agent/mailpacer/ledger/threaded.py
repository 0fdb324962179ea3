"""Run the blocking ledger from Trio: worker threads under a limiter sized to the pool."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import trio

from mailpacer.ledger.store import Ledger

__all__ = ["AsyncLedger"]

P = ParamSpec("P")
T = TypeVar("T")


class AsyncLedger:
    """``await ledger.run(ledger.sync.claim, ...)``: never blocks the event loop.

    SQLite gets one thread (one writer at a time is what it supports); MySQL gets as
    many as the connection pool has, so a thread never waits for a connection.
    """

    def __init__(self, ledger: Ledger, *, threads: int | None = None) -> None:
        self.sync = ledger
        if threads is None:
            threads = 1 if ledger.backend == "sqlite" else ledger.engine.pool.size()  # type: ignore[attr-defined]
        self.limiter = trio.CapacityLimiter(max(1, threads))

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self.limiter
        )

"""Run the blocking ledger from Trio: worker threads under a limiter sized to the pool."""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import trio
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from mailpacer.ledger.store import Ledger

__all__ = ["AsyncLedger", "is_outage"]

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("mailpacer.ledger")


def is_outage(exc: BaseException) -> bool:
    """The database is unreachable, frozen or restarting (worth waiting out), as opposed to
    a bug or a constraint violation (not worth repeating)."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


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
        self.waiting = 0  # calls currently waiting out an outage
        self.outage_since: float | None = None  # trio time the current outage began
        self.outages = 0  # outages seen (each logged once)
        self.max_backoff = 10.0
        self.calls = 0
        self.waited_seconds = 0.0  # for a worker thread (the limiter is sized to the pool)

    async def _in_thread(self, call: Callable[[], T], *, abandon: bool = False) -> T:
        """One ledger call in a worker thread under the pool-sized limiter, counted."""
        self.calls += 1
        asked = time.perf_counter()

        def timed() -> T:
            self.waited_seconds += time.perf_counter() - asked
            return call()

        return await trio.to_thread.run_sync(timed, limiter=self.limiter, abandon_on_cancel=abandon)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._in_thread(functools.partial(fn, *args, **kwargs))

    async def run_within(
        self, seconds: float, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``run`` for a caller that must answer in time (an HTTP request): raises
        ``trio.TooSlowError`` after ``seconds`` (waiting for a thread included). The call is
        then abandoned, not stopped: it keeps its thread and limiter slot until the
        database answers, and its transaction may still commit (callers are idempotent)."""
        with trio.fail_after(seconds):
            return await self._in_thread(functools.partial(fn, *args, **kwargs), abandon=True)

    async def patiently(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``run``, waiting out a database outage: exponential backoff with jitter
        (0.5 s doubling up to ``max_backoff``) until the call succeeds.

        Only for idempotent calls (claims, outcome writes guarded by state, reads): a
        call whose commit was lost with the connection may run twice.
        """
        delay = 0.5
        self.waiting += 1
        try:
            while True:
                try:
                    result = await self.run(fn, *args, **kwargs)
                except Exception as exc:
                    if not is_outage(exc):
                        raise
                    self._note_outage(exc)
                    await trio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, self.max_backoff)
                    continue
                self._note_recovery()
                return result
        finally:
            self.waiting -= 1

    def _note_outage(self, exc: BaseException) -> None:
        if self.outage_since is None:
            self.outage_since = trio.current_time()
            self.outages += 1
            orig = getattr(exc, "orig", None) or exc
            log.warning(
                "ledger database unavailable (%s: %s); sending is paused until it returns",
                type(orig).__name__,
                orig,
                extra={"event": "ledger.outage"},
            )

    def _note_recovery(self) -> None:
        if self.outage_since is not None:
            lasted = trio.current_time() - self.outage_since
            self.outage_since = None
            log.warning(
                "ledger database is back after %.1f s; sending resumes",
                lasted,
                extra={"event": "ledger.recovered"},
            )

    @property
    def in_outage(self) -> bool:
        return self.outage_since is not None

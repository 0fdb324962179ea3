"""Polling that spares the database: one query per poll, at most 4 polls a minute.

The old worker polled every 5 s (12 queries a minute per worker, whatever the load). Here an
idle agent polls every 15-20 s (jitter, so a fleet does not poll in step); a wake-up (a
campaign finished here, a local API call) brings the next poll forward, never closer than
``floor`` seconds to the previous one. A failed poll (database away) waits the full interval.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

from mailpacer.ledger.threaded import is_outage

__all__ = ["LedgerPoller"]

T = TypeVar("T")

log = logging.getLogger("mailpacer.poller")


class LedgerPoller(Generic[T]):
    """Calls ``query`` on a schedule and hands each result to ``deliver``."""

    def __init__(
        self,
        query: Callable[[], Awaitable[T]],
        deliver: Callable[[T], None],
        *,
        interval: float = 15.0,
        jitter: float = 5.0,
        floor: float = 15.0,
        rng: random.Random | None = None,
    ) -> None:
        if floor <= 0 or interval < floor:
            raise ValueError("need 0 < floor <= interval")
        self.query = query
        self.deliver = deliver
        self.interval = interval
        self.jitter = jitter
        self.floor = floor
        self.rng = rng or random.Random()
        self.polls = 0  # queries issued
        self.failures = 0
        self.last_poll: float | None = None  # trio time of the last query
        self._wake = trio.Event()

    def wake(self) -> None:
        """Poll again as soon as the floor allows (new work may be waiting)."""
        self._wake.set()

    def next_delay(self) -> float:
        return self.interval + self.rng.uniform(0.0, self.jitter)

    async def _poll(self) -> None:
        self.polls += 1
        self.last_poll = trio.current_time()
        try:
            found = await self.query()
        except Exception as exc:
            if not is_outage(exc):
                raise
            self.failures += 1
            log.warning(
                "polling the ledger failed (%s); next try in %.0f s",
                getattr(exc, "orig", None) or exc,
                self.interval,
                extra={"event": "poll.failed"},
            )
            return
        self.deliver(found)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._poll()
        task_status.started()
        while True:
            assert self.last_poll is not None
            with trio.move_on_at(self.last_poll + self.next_delay()):
                await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep_until(self.last_poll + self.floor)
            await self._poll()

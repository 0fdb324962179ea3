"""Concurrency caps: connections per relay, messages in flight per domain group.

``Slots`` is a first-come-first-served counting semaphore for Trio whose holders may take
more than one slot (a batch of messages in flight). Unlike ``trio.CapacityLimiter`` it is
not tied to the borrowing task, and a large request is never overtaken by small ones.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["Slots"]


class Slots:
    """``total`` slots (``math.inf``: unlimited), handed out in arrival order."""

    def __init__(self, total: float, name: str = "") -> None:
        if not total >= 1:
            raise ValueError(f"{name or 'slots'}: the cap must be at least 1, not {total!r}")
        self.total = total
        self.name = name
        self.borrowed = 0
        self._waiters: deque[tuple[int, trio.Event]] = deque()
        self._released: trio.Event | None = None

    @property
    def available(self) -> float:
        return self.total - self.borrowed

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _check(self, n: int) -> None:
        if n < 1 or n > self.total:
            raise ValueError(f"{self.name or 'slots'}: cannot hold {n} of {self.total}")

    @property
    def free(self) -> int:
        """Slots a newcomer could take now (0 while others wait in line)."""
        if self._waiters:
            return 0
        room = self.total - self.borrowed
        return int(min(room, 2**62))

    def take(self, n: int) -> int:
        """Take up to ``n`` slots without waiting; how many were taken (0..n).

        For a dispatcher that sends what may go now and leaves the rest for later, instead
        of waiting in line for all ``n``."""
        k = min(n, self.free)
        if k > 0:
            self.borrowed += k
        return max(k, 0)

    async def wait_released(self) -> None:
        """Until some holder gives slots back (not a reservation: look again after)."""
        if self._released is None:
            self._released = trio.Event()
        await self._released.wait()

    def try_acquire(self, n: int = 1) -> bool:
        self._check(n)
        if self._waiters or self.borrowed + n > self.total:
            return False
        self.borrowed += n
        return True

    async def acquire(self, n: int = 1) -> None:
        self._check(n)
        if self.try_acquire(n):
            await trio.lowlevel.checkpoint()
            return
        entry = (n, trio.Event())
        self._waiters.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry[1].is_set():  # granted just as we were cancelled: give it back
                self.release(n)
            else:
                self._waiters.remove(entry)
                self._wake()  # we may have been the head blocking smaller requests
            raise

    def release(self, n: int = 1) -> None:
        if n < 1 or n > self.borrowed:
            raise RuntimeError(f"{self.name or 'slots'}: releasing {n}, {self.borrowed} held")
        self.borrowed -= n
        self._wake()
        if self._released is not None:
            self._released.set()
            self._released = None

    def _wake(self) -> None:
        while self._waiters and self.borrowed + self._waiters[0][0] <= self.total:
            n, event = self._waiters.popleft()
            self.borrowed += n
            event.set()

    @asynccontextmanager
    async def hold(self, n: int = 1) -> AsyncIterator[None]:
        await self.acquire(n)
        try:
            yield
        finally:
            self.release(n)

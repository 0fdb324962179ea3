"""Rate limiting on Trio's clock (GCRA), so pacing is exact and testable with MockClock."""

from __future__ import annotations

import math

import trio

from mailpacer.config import Rate

__all__ = ["RateLimiter"]


class RateLimiter:
    """Generic cell rate algorithm: ``rate`` on average, at most ``burst`` back to back.

    One number of state (the theoretical arrival time), no timer tasks. ``take`` waits
    until at least one message may go and grants as many as the rate allows right now.
    """

    def __init__(self, rate: Rate, *, burst: int = 1) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = burst
        self.interval = rate.interval
        self._tolerance = self.interval * (burst - 1)
        self._tat: float | None = None
        self.waited = 0.0  # total seconds spent waiting (exposed as a metric)

    def _grantable(self, now: float, want: int) -> int:
        tat = now if self._tat is None or self._tat < now else self._tat
        room = now + self._tolerance - tat
        if room < 0:
            return 0
        return min(want, 1 + math.floor(room / self.interval + 1e-9))

    def delay(self) -> float:
        """Seconds until the next message may go (0 when one may go now)."""
        now = trio.current_time()
        tat = now if self._tat is None or self._tat < now else self._tat
        return max(0.0, tat - self._tolerance - now)

    async def take(self, want: int = 1) -> int:
        """Wait until at least one message may be sent; return how many (1..want) may go."""
        wait = self.delay()
        if wait <= 0:
            await trio.lowlevel.checkpoint()
            wait = self.delay()  # another task may have taken the slot meanwhile
        while wait > 0:
            started = trio.current_time()
            try:
                await trio.sleep(wait)
            finally:  # cancelled: only the time actually spent waiting counts
                self.waited += trio.current_time() - started
            wait = self.delay()
        # no checkpoint between the last delay() and the grant: no other task can interleave
        now = trio.current_time()
        granted = max(1, self._grantable(now, want))
        start = now if self._tat is None or self._tat < now else self._tat
        self._tat = start + granted * self.interval
        return granted

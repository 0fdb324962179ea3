"""Rate limiting on Trio's clock (GCRA), so pacing is exact and testable with MockClock."""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

from mailpacer.config import Rate

__all__ = ["EPSILON", "Gcra", "RateLimiter"]

# Times closer than this (seconds) are the same instant: float sums of intervals over days
# of virtual time must never leave a limit "ready in 1e-12 s" forever.
EPSILON = 1e-6


class Gcra:
    """The state of a generic cell rate algorithm, with the clock passed in (pure).

    One message every ``interval`` seconds on average, at most ``burst`` back to back. The
    only state is the theoretical arrival time (TAT) of the next message.
    """

    __slots__ = ("_tat", "burst", "interval")

    def __init__(self, interval: float, burst: int = 1) -> None:
        if not interval > 0 or not math.isfinite(interval):
            raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.interval = interval
        self.burst = burst
        self._tat = -math.inf

    @property
    def tolerance(self) -> float:
        return self.interval * (self.burst - 1)

    def available(self, now: float, want: int) -> int:
        """How many of ``want`` (0..want) may go at ``now``."""
        tat = self._tat if self._tat > now else now
        room = now + self.tolerance - tat + EPSILON
        if room < 0:
            return 0
        return min(want, 1 + math.floor(room / self.interval))

    def ready_at(self, now: float) -> float:
        """The earliest time (>= now) at which one message may go."""
        return max(now, self._tat - self.tolerance)

    def consume(self, now: float, n: int) -> None:
        start = self._tat if self._tat > now else now
        self._tat = start + n * self.interval

    def refund(self, now: float, n: int) -> None:
        """Give back ``n`` messages granted but not sent (never more credit than idle)."""
        self._tat = max(now, self._tat - n * self.interval)

    def set_interval(self, now: float, interval: float) -> None:
        """Change the rate from ``now`` on; the debt already run up scales with it."""
        if not interval > 0:
            raise ValueError("interval must be positive")
        if self._tat > now:
            self._tat = now + (self._tat - now) * interval / self.interval
        self.interval = interval


class RateLimiter:
    """Generic cell rate algorithm: ``rate`` on average, at most ``burst`` back to back.

    One number of state (the theoretical arrival time), no timer tasks. ``take`` waits
    until at least one message may go and grants as many as the rate allows right now.
    ``clock`` defaults to Trio's (virtual under MockClock).
    """

    def __init__(
        self,
        rate: Rate,
        *,
        burst: int = 1,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = burst
        self.interval = rate.interval
        self._gcra = Gcra(self.interval, burst)
        self._clock = clock
        self.waited = 0.0  # total seconds spent waiting (exposed as a metric)

    def delay(self) -> float:
        """Seconds until the next message may go (0 when one may go now)."""
        now = self._clock()
        return max(0.0, self._gcra.ready_at(now) - now)

    def try_take(self, want: int = 1) -> int:
        """Take up to ``want`` without waiting; 0 when none may go now."""
        now = self._clock()
        granted = self._gcra.available(now, want)
        if granted:
            self._gcra.consume(now, granted)
        return granted

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
        now = self._clock()
        granted = max(1, self._gcra.available(now, want))
        self._gcra.consume(now, granted)
        return granted

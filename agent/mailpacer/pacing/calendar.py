"""Wall-clock time for pacing: send windows, calendar hours and days, warm-up ramps.

Everything here works in Unix seconds ("wall" time) and a named time zone (``zoneinfo``),
so a window "Mon-Fri 09:00-17:00 Europe/Berlin" opens at 08:00 UTC in winter and 07:00 UTC
in summer. Wall time comes from an injectable function; :class:`TrioWallClock` ties it to
Trio's clock so that ``MockClock`` tests can cover days, weeks and DST changes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo

import trio

__all__ = [
    "DAY_NAMES",
    "Ramp",
    "SendWindows",
    "TrioWallClock",
    "WindowRule",
    "local_date",
    "period_bounds",
]

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class TrioWallClock:
    """Unix time that moves with Trio's clock: ``start`` (default ``time.time()``) at the
    first call, then exactly as far as ``clock`` moved. Under MockClock, days pass in
    milliseconds; in production it is the system time, read once."""

    def __init__(
        self, start: float | None = None, *, clock: Callable[[], float] = trio.current_time
    ) -> None:
        self._start = start
        self._clock = clock
        self._offset: float | None = None

    def __call__(self) -> float:
        now = self._clock()
        if self._offset is None:
            start = time.time() if self._start is None else self._start
            self._offset = start - now
        return now + self._offset


def local_date(wall: float, zone: ZoneInfo) -> date:
    return datetime.fromtimestamp(wall, zone).date()


def _at(day: date, minutes: int, zone: ZoneInfo) -> float:
    """Unix time of ``minutes`` after local midnight of ``day`` (1440 = next midnight).

    A local time in a DST gap is read with the offset before the change (``fold=0``), so
    "02:30" on a spring-forward day is 03:30 summer time; in the repeated hour of the
    autumn change it is the first occurrence.
    """
    extra, minutes = divmod(minutes, 1440)
    day = day + timedelta(days=extra)
    hour, minute = divmod(minutes, 60)
    return datetime.combine(day, dtime(hour, minute), tzinfo=zone).timestamp()


def period_bounds(wall: float, zone: ZoneInfo, period: str) -> tuple[float, float]:
    """The local calendar ``"hour"`` or ``"day"`` holding ``wall``: (start, end) in Unix time."""
    local = datetime.fromtimestamp(wall, zone)
    if period == "day":
        start = _at(local.date(), 0, zone)
        return start, _at(local.date(), 1440, zone)
    if period == "hour":
        floor = local.replace(minute=0, second=0, microsecond=0)
        start = floor.timestamp()
        # an hour is 3600 s in every zone with whole-hour offsets; the +1 h is absolute
        return start, start + 3600.0
    raise ValueError(f"unknown period {period!r}")


@dataclass(frozen=True, slots=True)
class WindowRule:
    """Sending allowed on ``days`` (0 = Monday) from ``start`` to ``end`` minutes after local
    midnight. ``end <= start`` crosses midnight: the window opened on one of ``days`` ends on
    the next day. ``end == 1440`` is midnight."""

    days: frozenset[int]
    start: int
    end: int
    text: str = ""

    @property
    def length(self) -> int:
        return self.end - self.start if self.end > self.start else self.end + 1440 - self.start

    def weekly_spans(self) -> list[tuple[int, int]]:
        """(start, end) minutes since Monday 00:00, possibly past the week's end."""
        return [(d * 1440 + self.start, d * 1440 + self.start + self.length) for d in self.days]

    def __str__(self) -> str:
        return self.text or f"days {sorted(self.days)} {self.start}-{self.end} min"


class SendWindows:
    """When sending is allowed: the union of weekly rules in one time zone.

    ``is_open(wall)`` and ``next_change(wall)`` cache the current span, so a hot path
    asking every few milliseconds costs a comparison, not a time-zone conversion.
    """

    def __init__(self, rules: Sequence[WindowRule], zone: ZoneInfo) -> None:
        if not rules:
            raise ValueError("at least one window rule is needed")
        self.rules = tuple(rules)
        self.zone = zone
        self._cache: tuple[float, float, bool] | None = None  # [from, to) and open?

    def _spans_around(self, wall: float) -> list[tuple[float, float]]:
        today = local_date(wall, self.zone)
        spans: list[tuple[float, float]] = []
        for offset in range(-1, 9):
            day = today + timedelta(days=offset)
            for rule in self.rules:
                if day.weekday() in rule.days:
                    start = _at(day, rule.start, self.zone)
                    end = _at(day, rule.start + rule.length, self.zone)
                    if end > start:
                        spans.append((start, end))
        spans.sort()
        merged: list[tuple[float, float]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged

    def _lookup(self, wall: float) -> tuple[float, float, bool]:
        cache = self._cache
        if cache is not None and cache[0] <= wall < cache[1]:
            return cache
        previous_end = -math.inf
        found: tuple[float, float, bool] | None = None
        for start, end in self._spans_around(wall):
            if wall < start:
                found = (max(previous_end, wall), start, False)
                break
            if wall < end:
                found = (start, end, True)
                break
            previous_end = end
        if found is None:  # unreachable with at least one rule: a week always has a span
            raise RuntimeError("no send window within eight days")
        self._cache = found
        return found

    def is_open(self, wall: float) -> bool:
        return self._lookup(wall)[2]

    def next_change(self, wall: float) -> float:
        """When the window next opens (if closed now) or closes (if open now)."""
        return self._lookup(wall)[1]

    def next_open(self, wall: float) -> float:
        """``wall`` itself when open, else when the next window opens."""
        _, end, is_open = self._lookup(wall)
        return wall if is_open else end


@dataclass(frozen=True, slots=True)
class Ramp:
    """Warm-up: at most ``start`` messages on the first local day, ``× (1 + growth)`` each
    following day, up to ``maximum``. Day 0 is ``since`` (a local date)."""

    start: int
    growth: float
    maximum: int | None = None
    since: date | None = None

    def cap(self, day: date, since: date) -> int:
        days = max(0, (day - since).days)
        ceiling = self.maximum if self.maximum is not None else 10**12
        if self.growth <= 0:
            return min(self.start, ceiling)
        # past the ceiling long before the float overflows
        limit_days = math.log(max(ceiling / self.start, 1.0)) / math.log1p(self.growth) + 1
        if days > limit_days:
            return ceiling
        return min(ceiling, math.floor(self.start * (1.0 + self.growth) ** days + 1e-9))

"""Shared helpers for the pacing tests: wall-clock instants in named zones, counting."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import date, datetime
from zoneinfo import ZoneInfo

BERLIN = ZoneInfo("Europe/Berlin")
UTC = ZoneInfo("UTC")


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, zone: ZoneInfo = BERLIN
) -> float:
    """Unix time of a local wall-clock instant."""
    return datetime(year, month, day, hour, minute, tzinfo=zone).timestamp()


def local(wall: float, zone: ZoneInfo = BERLIN) -> datetime:
    return datetime.fromtimestamp(wall, zone)


def per_local_day(walls: Iterable[float], zone: ZoneInfo = BERLIN) -> dict[date, int]:
    return dict(sorted(Counter(local(w, zone).date() for w in walls).items()))


def gcra_conforms(times: list[float], interval: float, burst: int) -> bool:
    """No window holds more than ``burst`` plus one message per ``interval``."""
    for i in range(len(times)):
        for k in (burst, burst + 1, burst + 10, burst + 100):
            if i + k < len(times) and times[i + k] - times[i] < (k - burst + 1) * interval - 1e-6:
                return False
    return True

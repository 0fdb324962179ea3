"""When will a campaign finish? A fluid simulation of the pacing plan.

Messages flow at the lowest rate on their path, only while every level's window is open,
no level is paused and no hour or day cap is used up; caps reset at local calendar
boundaries and ramps raise the day's cap. With a count per domain group, the groups share
the campaign-wide levels max-min fairly (water-filling), each capped by its own level.
The estimate treats shared levels as if this campaign had them to itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from mailpacer.pacing.calendar import SendWindows, local_date, period_bounds
from mailpacer.pacing.hierarchy import Limit
from mailpacer.pacing.spec import LimitSpec

__all__ = ["estimate_finish"]

_INSTANT = 1e12  # messages per second of a path without any rate: as good as no time
_HORIZON = 366 * 86400.0
_TINY = 1e-6


@dataclass
class _Cap:
    period: str
    zone: ZoneInfo
    cap_for: Callable[[float], int]
    start: float = -math.inf
    end: float = -math.inf
    used: float = 0.0
    cap: float = 0.0

    def roll(self, t: float) -> None:
        if not self.start <= t < self.end:
            self.start, self.end = period_bounds(t, self.zone, self.period)
            self.used = 0.0
            self.cap = float(self.cap_for(self.start))


@dataclass
class _Node:
    rate: float
    windows: SendWindows | None
    caps: list[_Cap] = field(default_factory=list)
    paused_until: float = -math.inf

    @classmethod
    def of(cls, limit: Limit, now: float, wall: float) -> _Node:
        spec = limit.spec
        windows = SendWindows(spec.windows, spec.timezone) if spec.windows else None
        node = cls(limit.current_rate or _INSTANT, windows)
        node.paused_until = wall + (limit.paused_until - now)
        since = limit.ramp_since or local_date(wall, spec.timezone)
        live = {cap.period: cap for cap in limit.caps}
        if spec.per_hour:
            per_hour = spec.per_hour
            node.caps.append(_Cap("hour", spec.timezone, lambda _start: per_hour))
        if spec.per_day or spec.ramp:

            def day_cap(start: float) -> int:
                cap = spec.per_day or 10**12
                if spec.ramp is not None:
                    cap = min(cap, spec.ramp.cap(local_date(start + 1.0, spec.timezone), since))
                return cap

            node.caps.append(_Cap("day", spec.timezone, day_cap))
        for cap in node.caps:
            cap.roll(wall)
            current = live.get(cap.period)
            if current is not None and current.start <= wall < current.end:
                cap.used = float(current.used)
        return node

    def roll(self, t: float) -> None:
        for cap in self.caps:
            cap.roll(t)

    def cap_left(self) -> float:
        return min((cap.cap - cap.used for cap in self.caps), default=math.inf)

    def blocked(self, t: float) -> bool:
        if t < self.paused_until - _TINY:
            return True
        if self.windows is not None and not self.windows.is_open(t):
            return True
        return self.cap_left() <= _TINY

    def next_boundary(self, t: float) -> float:
        times = [cap.end for cap in self.caps]
        if self.windows is not None:
            times.append(self.windows.next_change(t))
        if self.paused_until > t:
            times.append(self.paused_until)
        return min((x for x in times if x > t), default=math.inf)

    def consume(self, amount: float) -> None:
        for cap in self.caps:
            cap.used += amount


def _waterfill(total: float, ceilings: Mapping[str | None, float]) -> dict[str | None, float]:
    """Max-min fair split of ``total`` among groups, none above its ceiling."""
    flows: dict[str | None, float] = {}
    left = total
    ordered = sorted(ceilings.items(), key=lambda item: item[1])
    for index, (group, ceiling) in enumerate(ordered):
        share = left / (len(ordered) - index)
        flows[group] = min(ceiling, share)
        left -= flows[group]
    return flows


def _node(item: Limit | LimitSpec, now: float, wall: float) -> _Node:
    if isinstance(item, LimitSpec):
        item = Limit("eta", item, clock=lambda: now, wall=lambda: wall)
    return _Node.of(item, now, wall)


def estimate_finish(
    remaining: int | Mapping[str | None, int],
    limits: Sequence[Limit | LimitSpec],
    *,
    group_limits: Mapping[str | None, Sequence[Limit | LimitSpec]] | None = None,
    now: float,
    wall: float,
    horizon: float = _HORIZON,
) -> float | None:
    """The Unix time at which ``remaining`` messages (or counts per domain group) are sent.

    ``limits``: the levels every message passes (global, relay, campaign), live
    :class:`Limit` objects (their rate after AIMD, pauses and what their caps have
    used count) or plain specs. ``group_limits``: the extra levels per group. ``now`` is
    the time on the limits' clock, ``wall`` the Unix time. None: not within ``horizon``.
    """
    shared = [_node(item, now, wall) for item in limits]
    if isinstance(remaining, Mapping):
        left = {group: float(n) for group, n in remaining.items() if n > 0}
    else:
        left = {None: float(remaining)} if remaining > 0 else {}
    group_limits = group_limits or {}
    groups = {g: [_node(item, now, wall) for item in group_limits.get(g, ())] for g in left}
    every = shared + [node for nodes in groups.values() for node in nodes]
    t = wall
    for _ in range(1_000_000):
        if not left:
            return t
        if t > wall + horizon:
            return None
        for node in every:
            node.roll(t)
        boundary = min((node.next_boundary(t) for node in every), default=math.inf)
        flows: dict[str | None, float] = {}
        if not any(node.blocked(t) for node in shared):
            total = min((node.rate for node in shared), default=_INSTANT)
            ceilings = {
                g: min((node.rate for node in groups[g]), default=_INSTANT)
                for g in left
                if not any(node.blocked(t) for node in groups[g])
            }
            flows = _waterfill(total, ceilings) if ceilings else {}
        flowing = sum(flows.values())
        if flowing <= 0:
            if math.isinf(boundary):
                return None
            t = boundary
            continue
        dt = boundary - t
        for g, f in flows.items():
            dt = min(dt, left[g] / f)
            for node in groups[g]:
                dt = min(dt, node.cap_left() / f)
        for node in shared:
            dt = min(dt, node.cap_left() / flowing)
        for g, f in flows.items():
            left[g] -= f * dt
            for node in groups[g]:
                node.consume(f * dt)
            if left[g] <= _TINY:
                del left[g]
        for node in shared:
            node.consume(flowing * dt)
        t += dt
    return None

"""The rate-limit hierarchy: every level evaluated together, capacity shared fairly.

A :class:`Limit` is one level (the agent, a relay, a destination domain group or a
campaign): a GCRA rate with burst (adjusted by AIMD), calendar caps per hour and per day
(a warm-up ramp lowers the day's cap), send windows, and a pause set by a server's hint.
A message may go when *every* level on its path allows it; capacity is taken from all of
them at once or from none, so no level is drained while the message waits on another.

A :class:`Pacer` holds the levels of one agent and hands capacity to several campaigns
fairly: waiting requests are served in order of each campaign's virtual time (messages
granted divided by its weight; start-time fair queuing), so a campaign that asks often
cannot starve one that asks rarely, and a campaign that was idle does not bank credit.

Time: ``clock`` is the monotonic Trio clock (virtual under MockClock); ``wall`` is Unix
time for windows and calendar days (default :class:`TrioWallClock`, moving with ``clock``).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from zoneinfo import ZoneInfo

import trio

from mailpacer.pacing.calendar import SendWindows, TrioWallClock, local_date, period_bounds
from mailpacer.pacing.concurrency import Slots
from mailpacer.pacing.feedback import Aimd, ReplySignal, classify_reply
from mailpacer.pacing.limits import EPSILON, Gcra
from mailpacer.pacing.spec import LimitSpec, PacingConfig

__all__ = [
    "CalendarCap",
    "Limit",
    "Pacer",
    "acquire_together",
    "available_together",
    "ready_together",
    "try_acquire_together",
]

Clock = Callable[[], float]
DEFAULT_MAX_PAUSE = 3600.0


class CalendarCap:
    """At most ``cap_for(period_start)`` messages per local calendar hour or day."""

    __slots__ = ("cap", "cap_for", "end", "period", "start", "used", "zone")

    def __init__(self, period: str, zone: ZoneInfo, cap_for: Callable[[float], int]) -> None:
        self.period = period
        self.zone = zone
        self.cap_for = cap_for
        self.start = -math.inf
        self.end = -math.inf
        self.used = 0
        self.cap = 0

    def roll(self, wall: float) -> None:
        if not self.start <= wall < self.end:
            self.start, self.end = period_bounds(wall, self.zone, self.period)
            self.used = 0
            self.cap = self.cap_for(self.start)

    def left(self, wall: float) -> int:
        self.roll(wall)
        return max(0, self.cap - self.used)

    def consume(self, wall: float, n: int) -> None:
        self.roll(wall)
        self.used += n

    def refund(self, wall: float, n: int) -> None:
        if self.start <= wall < self.end:
            self.used = max(0, self.used - n)


class Limit:
    """One level of the hierarchy; usable alone or together with others (same clocks)."""

    def __init__(
        self,
        name: str,
        spec: LimitSpec | None = None,
        *,
        clock: Clock = trio.current_time,
        wall: Clock | None = None,
    ) -> None:
        spec = spec or LimitSpec()
        self.name = name
        self.spec = spec
        self.clock = clock
        self.wall: Clock = wall if wall is not None else TrioWallClock(clock=clock)
        self.base_interval = spec.rate.interval if spec.rate else None
        self.gcra = Gcra(spec.rate.interval, spec.burst) if spec.rate else None
        self.aimd = Aimd(spec.aimd) if spec.aimd else None
        self.windows = SendWindows(spec.windows, spec.timezone) if spec.windows else None
        self.ramp_since: date | None = spec.ramp.since if spec.ramp else None
        self.caps: list[CalendarCap] = []
        if spec.per_hour:
            per_hour = spec.per_hour
            self.caps.append(CalendarCap("hour", spec.timezone, lambda _start: per_hour))
        if spec.per_day or spec.ramp:
            self.caps.append(CalendarCap("day", spec.timezone, self._day_cap))
        self.paused_until = -math.inf  # on ``clock``
        self.pause_reason = ""
        self.waited = 0.0

    # -- state ------------------------------------------------------------------------

    def _day_cap(self, day_start: float) -> int:
        spec = self.spec
        cap = spec.per_day if spec.per_day else 10**12
        if spec.ramp is not None:
            day = local_date(day_start + 1.0, spec.timezone)
            if self.ramp_since is None:
                self.ramp_since = day  # the ramp starts on the first day it is used
            cap = min(cap, spec.ramp.cap(day, self.ramp_since))
        return cap

    @property
    def rate_factor(self) -> float:
        """The AIMD share of the configured rate (1.0 without AIMD)."""
        return self.aimd.factor if self.aimd else 1.0

    @property
    def current_rate(self) -> float | None:
        """Messages per second allowed now (None: no rate at this level)."""
        return 1.0 / self.gcra.interval if self.gcra else None

    def periods(self) -> dict[str, float]:
        """The current local hour and/or day this level caps: ``{"hour": start, ...}`` in
        Unix time (empty without caps): what to count in the ledger after a restart."""
        wall = self.wall()
        for cap in self.caps:
            cap.roll(wall)
        return {cap.period: cap.start for cap in self.caps}

    def seed(
        self,
        *,
        sent_this_hour: int = 0,
        sent_today: int = 0,
        first_sent_at: float | None = None,
    ) -> None:
        """After a restart: count what was already sent in the current hour and day, and
        start a ramp without a ``since`` date on the day of the first message sent
        (``first_sent_at``, Unix time), not again on day 0."""
        if (
            first_sent_at is not None
            and self.spec.ramp is not None
            and self.spec.ramp.since is None
        ):
            self.ramp_since = local_date(first_sent_at, self.spec.timezone)
        wall = self.wall()
        for cap in self.caps:
            cap.start = cap.end = -math.inf  # recompute the cap (the ramp's day may differ)
            cap.roll(wall)
            cap.used = sent_this_hour if cap.period == "hour" else sent_today

    # -- evaluation (``now`` on clock, ``wall`` in Unix seconds) -----------------------

    def _available(self, now: float, wall: float, want: int) -> int:
        if now < self.paused_until - EPSILON:
            return 0
        if self.windows is not None and not self.windows.is_open(wall):
            return 0
        n = want
        for cap in self.caps:
            n = min(n, cap.left(wall))
            if n <= 0:
                return 0
        if self.gcra is not None:
            n = self.gcra.available(now, n)
        return n

    def _ready_at(self, now: float, wall: float) -> float:
        """When this level may allow one message: a lower bound, re-checked then."""
        ready = max(now, self.paused_until)
        if self.windows is not None and not self.windows.is_open(wall):
            ready = max(ready, now + self.windows.next_open(wall) - wall)
        for cap in self.caps:
            if cap.left(wall) <= 0:
                ready = max(ready, now + cap.end - wall)
        if self.gcra is not None:
            ready = max(ready, self.gcra.ready_at(now))
        return ready

    def _consume(self, now: float, wall: float, n: int) -> None:
        if self.gcra is not None:
            self.gcra.consume(now, n)
        for cap in self.caps:
            cap.consume(wall, n)

    def _refund(self, now: float, wall: float, n: int) -> None:
        if self.gcra is not None:
            self.gcra.refund(now, n)
        for cap in self.caps:
            cap.refund(wall, n)

    # -- standalone API ---------------------------------------------------------------

    def available(self, want: int = 1) -> int:
        return self._available(self.clock(), self.wall(), want)

    def ready_at(self) -> float:
        """The earliest time (on ``clock``) one message might go; ``clock()`` when now."""
        now = self.clock()
        wall = self.wall()
        return now if self._available(now, wall, 1) else self._ready_at(now, wall)

    def try_acquire(self, want: int = 1) -> int:
        return try_acquire_together((self,), want)

    async def acquire(self, want: int = 1) -> int:
        return await acquire_together((self,), want)

    def refund(self, n: int) -> None:
        self._refund(self.clock(), self.wall(), n)

    def pause(self, seconds: float, reason: str = "") -> None:
        until = self.clock() + seconds
        if until > self.paused_until:
            self.paused_until = until
            self.pause_reason = reason

    def feedback(self, signal: ReplySignal, n: int = 1) -> bool:
        """Apply what a reply said; True when the level got faster (waiters should look)."""
        now = self.clock()
        aimd = self.aimd
        if signal.throttle:
            if aimd is not None and aimd.throttled(now):
                self._set_factor(now)
            pause = signal.retry_after
            if pause is None and aimd is not None and aimd.spec.pause > 0:
                pause = aimd.spec.pause
            if pause:
                limit = aimd.spec.max_pause if aimd is not None else DEFAULT_MAX_PAUSE
                self.pause(min(pause, limit), "server asked to wait")
            return False
        if signal.success and aimd is not None and aimd.succeeded(now, n):
            self._set_factor(now)
            return True
        return False

    def _set_factor(self, now: float) -> None:
        if self.gcra is not None and self.base_interval is not None and self.aimd is not None:
            self.gcra.set_interval(now, self.base_interval / self.aimd.factor)

    def __repr__(self) -> str:
        return f"<Limit {self.name}>"


# -- several levels together ------------------------------------------------------------


def available_together(limits: Sequence[Limit], want: int, now: float, wall: float) -> int:
    n = want
    for limit in limits:
        n = limit._available(now, wall, n)
        if n <= 0:
            return 0
    return n


def ready_together(limits: Sequence[Limit], now: float, wall: float) -> float:
    """When all of ``limits`` might allow one message (``now`` if they do now)."""
    if available_together(limits, 1, now, wall):
        return now
    return max(
        (limit._ready_at(now, wall) for limit in limits if not limit._available(now, wall, 1)),
        default=now,
    )


def _clocks(limits: Sequence[Limit]) -> tuple[float, float]:
    if not limits:
        raise ValueError("no limits given")
    return limits[0].clock(), limits[0].wall()


def try_acquire_together(limits: Sequence[Limit], want: int = 1) -> int:
    """Take up to ``want`` from every limit at once, or nothing (0) if any is closed."""
    now, wall = _clocks(limits)
    n = available_together(limits, want, now, wall)
    if n:
        for limit in limits:
            limit._consume(now, wall, n)
    return n


async def acquire_together(limits: Sequence[Limit], want: int = 1) -> int:
    """Wait until all of ``limits`` allow at least one message; take 1..want from all.

    No fairness between callers (see :class:`Pacer` for that); nothing is taken from any
    level while waiting, and a cancelled wait takes nothing.
    """
    if want < 1:
        raise ValueError("want must be at least 1")
    await trio.lowlevel.checkpoint_if_cancelled()
    while True:
        granted = try_acquire_together(limits, want)
        if granted:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return granted
        now, wall = _clocks(limits)
        started = trio.current_time()
        try:
            await trio.sleep_until(trio.current_time() + ready_together(limits, now, wall) - now)
        finally:
            limits[0].waited += trio.current_time() - started


# -- the agent's hierarchy with fair sharing -----------------------------------------------


@dataclass(eq=False)
class _Request:
    campaign: _Campaign
    limits: tuple[Limit, ...]
    want: int
    seq: int
    granted: int = 0
    ready_at: float = math.inf
    sleep_until: float = math.inf
    wakeup: trio.Event = field(default_factory=trio.Event)


@dataclass(eq=False)
class _Campaign:
    name: str
    limit: Limit | None
    weight: float = 1.0
    vtime: float = 0.0
    waited: float = 0.0
    granted: int = 0
    queue: deque[_Request] = field(default_factory=deque)


class Pacer:
    """The agent's rate-limit hierarchy: global → relay → domain group → campaign.

    ``acquire(campaign, relay=..., group=..., want=n)`` waits until every level on that
    path allows at least one message and returns how many (1..n) may go now; concurrent
    campaigns are served fairly. Replies go to ``observe`` (AIMD, hints); connection and
    in-flight caps are :class:`Slots` from ``connection_slots`` / ``in_flight_slots``.
    """

    def __init__(
        self,
        config: PacingConfig | None = None,
        *,
        clock: Clock = trio.current_time,
        wall: Clock | None = None,
    ) -> None:
        self.config = config or PacingConfig()
        self.clock = clock
        self.wall: Clock = wall if wall is not None else TrioWallClock(clock=clock)
        spec = self.config.global_limit
        self.global_limit = self._limit("global", spec) if spec and spec.paces else None
        self._relays: dict[str, Limit] = {}
        self._groups: dict[str, Limit] = {}
        self._campaigns: dict[str, _Campaign] = {}
        self._active: list[_Campaign] = []
        self._vclock = 0.0
        self._seq = itertools.count()
        self._connections: dict[str, Slots] = {}
        self._in_flight: dict[tuple[str, str], Slots] = {}

    def _limit(self, name: str, spec: LimitSpec | None) -> Limit:
        return Limit(name, spec, clock=self.clock, wall=self.wall)

    # -- the levels -------------------------------------------------------------------

    def add_campaign(
        self, name: str, spec: LimitSpec | None = None, *, weight: float = 1.0
    ) -> Limit | None:
        """Register a campaign with its own limits (default: the config's ``campaign``)
        and its share of contended capacity (``weight``). Returns its level, if it paces."""
        if not weight > 0:
            raise ValueError("weight must be positive")
        spec = spec if spec is not None else self.config.campaign
        limit = self._limit(f"campaign:{name}", spec) if spec and spec.paces else None
        existing = self._campaigns.get(name)
        if existing is not None:
            existing.limit, existing.weight = limit, weight
            self._poke()
        else:
            self._campaigns[name] = _Campaign(name, limit, weight, vtime=self._vclock)
        return limit

    def remove_campaign(self, name: str) -> None:
        camp = self._campaigns.pop(name, None)
        if camp is not None and camp.queue:
            raise RuntimeError(f"campaign {name!r} still has waiting requests")

    def campaign(self, name: str) -> Limit | None:
        return self._campaign(name).limit

    def _campaign(self, name: str) -> _Campaign:
        camp = self._campaigns.get(name)
        if camp is None:
            self.add_campaign(name)
            camp = self._campaigns[name]
        return camp

    def relay(self, name: str) -> Limit:
        """The relay's level (created on first use from ``relays.<name>`` or ``relays."*"``;
        a relay without limits still gets one, so a server's hint can pause it)."""
        limit = self._relays.get(name)
        if limit is None:
            limit = self._relays[name] = self._limit(f"relay:{name}", self.config.relay_spec(name))
        return limit

    def group(self, name: str) -> Limit:
        limit = self._groups.get(name)
        if limit is None:
            limit = self._groups[name] = self._limit(f"group:{name}", self.config.group_spec(name))
        return limit

    def group_for(self, domain: str, mx: str | None = None) -> str | None:
        """The domain group of a recipient domain (or address), by domain or MX host."""
        return self.config.domain_groups.group_for(domain, mx)

    def limits_for(
        self, campaign: str, *, relay: str | None = None, group: str | None = None
    ) -> tuple[Limit, ...]:
        limits: list[Limit] = []
        if self.global_limit is not None:
            limits.append(self.global_limit)
        if relay is not None:
            limits.append(self.relay(relay))
        if group is not None:
            limits.append(self.group(group))
        camp_limit = self._campaign(campaign).limit
        if camp_limit is not None:
            limits.append(camp_limit)
        return tuple(limits)

    # -- capacity ---------------------------------------------------------------------

    def when(self, campaign: str, *, relay: str | None = None, group: str | None = None) -> float:
        """When (on ``clock``) this path might allow one message; ``clock()`` if now."""
        limits = self.limits_for(campaign, relay=relay, group=group)
        if not limits:
            return self.clock()
        return ready_together(limits, self.clock(), self.wall())

    def try_acquire(
        self,
        campaign: str,
        *,
        relay: str | None = None,
        group: str | None = None,
        want: int = 1,
    ) -> int:
        """Take up to ``want`` at once from every level on the path, or 0 without waiting.

        Waiting requests are served first; this never overtakes a campaign's own queue.
        """
        if want < 1:
            raise ValueError("want must be at least 1")
        self._serve()
        camp = self._campaign(campaign)
        if camp.queue:
            return 0
        limits = self.limits_for(campaign, relay=relay, group=group)
        now, wall = self.clock(), self.wall()
        n = available_together(limits, want, now, wall)
        if n:
            camp.vtime = max(camp.vtime, self._vclock)
            self._grant(camp, limits, n, now, wall)
        return n

    async def acquire(
        self,
        campaign: str,
        *,
        relay: str | None = None,
        group: str | None = None,
        want: int = 1,
    ) -> int:
        """Wait until every level allows at least one message; return how many (1..want)
        were taken. A cancelled wait takes nothing."""
        if want < 1:
            raise ValueError("want must be at least 1")
        await trio.lowlevel.checkpoint_if_cancelled()
        camp = self._campaign(campaign)
        limits = self.limits_for(campaign, relay=relay, group=group)
        request = _Request(camp, limits, want, next(self._seq))
        if not camp.queue:
            camp.vtime = max(camp.vtime, self._vclock)  # no credit banked while idle
            self._active.append(camp)
        camp.queue.append(request)
        try:
            self._serve()
            if request.granted:
                await trio.lowlevel.cancel_shielded_checkpoint()
            while not request.granted:
                await self._sleep(request)
        except BaseException:
            if request.granted:  # granted by another task as we were cancelled
                self._undo(camp, limits, request.granted)
            raise
        finally:
            self._dequeue(request)
        return request.granted

    async def _sleep(self, request: _Request) -> None:
        """Sleep until the request may be ready (or is woken), then serve the waiters."""
        request.wakeup = trio.Event()
        request.sleep_until = request.ready_at
        started = trio.current_time()
        try:
            with trio.move_on_at(request.ready_at):
                await request.wakeup.wait()
        finally:
            request.campaign.waited += trio.current_time() - started
        if not request.granted:
            self._serve()

    def refund(
        self,
        campaign: str,
        n: int,
        *,
        relay: str | None = None,
        group: str | None = None,
    ) -> None:
        """Give back ``n`` messages acquired on this path but not sent (e.g. on pause)."""
        self._undo(self._campaign(campaign), self.limits_for(campaign, relay=relay, group=group), n)

    def waited(self, campaign: str) -> float:
        """Seconds the campaign's requests spent waiting (a metric)."""
        return self._campaign(campaign).waited

    def granted(self, campaign: str) -> int:
        return self._campaign(campaign).granted

    # -- feedback ---------------------------------------------------------------------

    def observe(
        self,
        code: int | None,
        text: str = "",
        *,
        relay: str | None = None,
        group: str | None = None,
        n: int = 1,
    ) -> ReplySignal:
        """Feed one SMTP reply (``n`` identical ones) to the relay's and/or the group's
        level: a throttle cuts their rate (AIMD) and a hint pauses them; successes raise
        the rate back. Pass only ``relay`` for replies about the session, both for
        replies about a recipient. Returns what the reply meant."""
        signal = classify_reply(code, text)
        if not (signal.throttle or signal.success):
            return signal
        faster = False
        for limit in self._scope(relay, group):
            faster |= limit.feedback(signal, n)
        if faster:
            self._poke()
        return signal

    def _scope(self, relay: str | None, group: str | None) -> Iterable[Limit]:
        if relay is not None:
            yield self.relay(relay)
        if group is not None:
            yield self.group(group)

    # -- concurrency ------------------------------------------------------------------

    def connection_slots(self, relay: str) -> Slots:
        """Connections to ``relay`` (``max_connections``; unlimited if not set)."""
        slots = self._connections.get(relay)
        if slots is None:
            spec = self.config.relay_spec(relay)
            cap = spec.max_connections if spec and spec.max_connections else math.inf
            slots = self._connections[relay] = Slots(cap, f"connections to {relay}")
        return slots

    def max_messages_per_connection(self, relay: str) -> int | None:
        spec = self.config.relay_spec(relay)
        return spec.max_messages_per_connection if spec else None

    def in_flight_slots(self, *, relay: str | None = None, group: str | None = None) -> Slots:
        """Messages in flight to a relay or a domain group (``max_in_flight``)."""
        if (relay is None) == (group is None):
            raise ValueError("give exactly one of relay or group")
        kind, name = ("relay", relay) if relay is not None else ("group", group or "")
        slots = self._in_flight.get((kind, name))
        if slots is None:
            spec = self.config.relay_spec(name) if kind == "relay" else self.config.group_spec(name)
            cap = spec.max_in_flight if spec and spec.max_in_flight else math.inf
            slots = self._in_flight[(kind, name)] = Slots(cap, f"in flight to {kind} {name}")
        return slots

    # -- ETA --------------------------------------------------------------------------

    def eta(
        self,
        campaign: str,
        remaining: int | Mapping[str | None, int],
        *,
        relay: str | None = None,
    ) -> float | None:
        """When (Unix time) ``remaining`` recipients (or a count per domain group) would be
        sent on this path, respecting rates, windows, caps, ramps and pauses as they stand,
        if this campaign had the shared levels to itself. None: not within a year."""
        from mailpacer.pacing.eta import estimate_finish

        shared = self.limits_for(campaign, relay=relay)
        per_group: dict[str | None, tuple[Limit, ...]] = {}
        if isinstance(remaining, Mapping):
            per_group = {g: ((self.group(g),) if g is not None else ()) for g in remaining}
        return estimate_finish(
            remaining, shared, group_limits=per_group, now=self.clock(), wall=self.wall()
        )

    # -- fair service -----------------------------------------------------------------

    def _grant(
        self, camp: _Campaign, limits: Sequence[Limit], n: int, now: float, wall: float
    ) -> None:
        for limit in limits:
            limit._consume(now, wall, n)
        self._vclock = max(self._vclock, camp.vtime)
        camp.vtime += n / camp.weight
        camp.granted += n

    def _undo(self, camp: _Campaign, limits: Sequence[Limit], n: int) -> None:
        now, wall = self.clock(), self.wall()
        for limit in limits:
            limit._refund(now, wall, n)
        camp.vtime -= n / camp.weight
        camp.granted -= n
        self._poke()

    def _serve(self) -> None:
        """Grant waiting requests in fair order while any can go; set the others' wake-up
        times. Runs without a checkpoint: no other task sees a half-made decision."""
        if not self._active:
            return
        now, wall = self.clock(), self.wall()
        while True:
            # each campaign's oldest request that can go now (a request waiting on one
            # domain group does not hold up the campaign's others), least served first
            best: tuple[float, int, _Request, int] | None = None
            for camp in self._active:
                if best is not None and camp.vtime > best[0]:
                    continue
                for request in camp.queue:
                    n = available_together(request.limits, request.want, now, wall)
                    if n:
                        if best is None or (camp.vtime, request.seq) < best[:2]:
                            best = (camp.vtime, request.seq, request, n)
                        break
            if best is None:
                break
            request, n = best[2], best[3]
            camp = request.campaign
            self._grant(camp, request.limits, n, now, wall)
            request.granted = n
            camp.queue.remove(request)
            request.wakeup.set()
            if not camp.queue:
                self._active.remove(camp)
        for camp in self._active:
            for request in camp.queue:
                request.ready_at = ready_together(request.limits, now, wall)
                if request.ready_at < request.sleep_until:
                    request.wakeup.set()  # sleeping too long: wake up and sleep again

    def _dequeue(self, request: _Request) -> None:
        camp = request.campaign
        if request in camp.queue:
            camp.queue.remove(request)
            if not camp.queue:
                self._active.remove(camp)

    def _poke(self) -> None:
        """Something got looser: every waiter looks again."""
        for camp in self._active:
            for request in camp.queue:
                request.wakeup.set()

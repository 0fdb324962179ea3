"""The update scheduler: when to report, what to put in a request, what to do on failure.

A pure, clock-driven Trio service. It reads the durable outbox (on the ledger's threads),
never touches the send path, and keeps its state in attributes for /readyz and metrics:
``breaker``, ``backlog``, ``last_success``, ``last_error``, ``in_flight``.

Rules (``ReportConfig`` defaults): at least ``min_interval`` (15 s) between the starts of
any two requests; otherwise one request per interval of the fastest active campaign's
speed tier; campaign lifecycle events, and a backlog larger than one batch, go at the
floor; at most ``max_in_flight`` (2) requests at once; failures back off exponentially
with full jitter (1 s .. 10 min, ``Retry-After`` honoured); after ``breaker_threshold`` (5)
consecutive failures the breaker opens for 60 s, then lets one probe through (half-open).
"""

from __future__ import annotations

import enum
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from mailpacer.report.client import Attempt
from mailpacer.report.config import ReportConfig
from mailpacer.report.outbox import Backlog, Outbox, OutboxError
from mailpacer.report.protocol import LIFECYCLE_TYPES, OutboxEvent, build_document, included

__all__ = ["Breaker", "CampaignActivity", "ReportScheduler"]

log = logging.getLogger("mailpacer.report")

_BEAT = 5.0  # the scheduler wakes at least this often (heartbeat for /healthz)


class Breaker(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class CampaignActivity:
    """An active campaign as the engine sees it (from memory): its speed and counters."""

    name: str
    per_minute: float
    counters: Mapping[str, int] = field(default_factory=dict)
    id: int | None = None
    status: str = "running"

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "per_minute": round(self.per_minute, 3),
            "counters": dict(self.counters),
        }


@dataclass(slots=True)
class _Batch:
    events: list[OutboxEvent]  # sent one by one (``detail``)
    seqs: list[int]  # every outbox row the request covers
    lifecycle: int
    full: bool

    @property
    def first(self) -> int | None:
        return self.seqs[0] if self.seqs else None

    @property
    def last(self) -> int | None:
        return self.seqs[-1] if self.seqs else None


Poster = Callable[[Mapping[str, Any]], Awaitable[Attempt]]
ActivitySource = Callable[[], Sequence[CampaignActivity]]


class ReportScheduler:
    """``await nursery.start(scheduler.run)``; ``scheduler.notify(urgent=True)`` after the
    engine writes a campaign lifecycle event (otherwise the backlog poll finds it)."""

    def __init__(
        self,
        config: ReportConfig,
        outbox: Outbox,
        post: Poster,
        activity: ActivitySource = tuple,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.post = post
        self.activity = activity
        self._rng = rng or random.Random()
        # Observable state (trio clock times unless named *_wall).
        self.breaker = Breaker.CLOSED
        self.breaker_open_until = -math.inf
        self.backlog = Backlog()
        self.consecutive_failures = 0
        self.in_flight = 0
        self.max_in_flight_seen = 0
        self.requests = 0
        self.failures = 0
        self.events_delivered = 0
        self.last_success: float | None = None
        self.last_success_wall: float | None = None
        self.last_error: str | None = None
        self.heartbeat = -math.inf
        self.retry_at = -math.inf
        self.last_request_at = -math.inf
        # Internal.
        self._batches: list[_Batch] = []  # in flight
        self._urgent = False
        self._more = False  # the last batch was full: more than one batch is waiting
        self._wake = trio.Event()

    # -- the engine's side -------------------------------------------------------------

    def notify(self, *, urgent: bool = False) -> None:
        """New events are in the outbox; ``urgent`` for campaign lifecycle events."""
        self._urgent = self._urgent or urgent
        self._wake.set()

    # -- observation ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return (
            self.breaker is not Breaker.OPEN and self.backlog.events < self.config.backlog_warning
        )

    def readiness(self) -> dict[str, Any]:
        """For /readyz: breaker state, backlog, last success, last error (no secrets)."""
        now = trio.current_time()
        oldest = self.backlog.oldest_created_at
        return {
            "ok": self.ready,
            "breaker": self.breaker.value,
            "backlog": self.backlog.events,
            "backlog_warning": self.backlog.events >= self.config.backlog_warning,
            "oldest_undelivered_age_seconds": (
                None if oldest is None else round(max(0.0, time.time() - oldest), 1)
            ),
            "last_success_age_seconds": (
                None if self.last_success is None else round(now - self.last_success, 1)
            ),
            "last_error": self.last_error,
            "in_flight": self.in_flight,
        }

    # -- the service ------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[ReportScheduler] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await self._refresh_backlog()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._poll_backlog)
            task_status.started(self)
            while True:
                await self._until_due()
                batch = await self._take_batch()
                if batch is None:
                    continue
                self._start(nursery, batch)

    def next_request_time(self) -> float:
        """When the next request may start (math.inf: nothing to send)."""
        cfg = self.config
        if self.in_flight >= cfg.max_in_flight:
            return math.inf
        if self.breaker is Breaker.HALF_OPEN and self.in_flight:
            return math.inf  # the one probe is out
        earliest = max(self.last_request_at + cfg.min_interval, self.retry_at)
        if self.breaker is Breaker.OPEN:
            earliest = max(earliest, self.breaker_open_until)
        waiting = self.backlog.events - sum(len(b.seqs) for b in self._batches)
        lifecycle = self.backlog.lifecycle - sum(b.lifecycle for b in self._batches)
        per_batch = cfg.batch_size if cfg.detail == "all" else cfg.scan_limit
        if self._urgent or lifecycle > 0 or self._more or waiting > per_batch:
            return earliest
        active = self.activity()
        if active:
            fastest = max(c.per_minute for c in active)
            return max(earliest, self.last_request_at + cfg.interval_for(fastest))
        if waiting > 0:
            return earliest  # left over (e.g. after a restart): deliver it
        return math.inf

    async def _until_due(self) -> None:
        while True:
            now = trio.current_time()
            self.heartbeat = now
            if self.breaker is Breaker.OPEN and now >= self.breaker_open_until:
                self.breaker = Breaker.HALF_OPEN
                log.info("report: circuit breaker half-open, sending one probe")
            when = self.next_request_time()
            if when <= now:
                return
            self._wake = trio.Event()
            with trio.move_on_at(min(when, now + _BEAT)):
                await self._wake.wait()

    async def _take_batch(self) -> _Batch | None:
        """The oldest undelivered events not in flight (a contiguous run of the outbox)."""
        cfg = self.config
        limit = cfg.batch_size if cfg.detail == "all" else cfg.scan_limit
        windows: list[tuple[int, int | None]] = []
        after = 0
        for b in sorted(self._batches, key=lambda b: b.first or 0):
            if b.first is not None and b.last is not None:
                windows.append((after, b.first))
                after = b.last
        windows.append((after, None))
        rows: list[OutboxEvent] = []
        try:
            for after, before in windows:
                rows = await self.outbox.fetch(after=after, before=before, limit=limit)
                if rows:
                    break
        except OutboxError as exc:
            self._outbox_trouble(exc)
            return None
        batch = _Batch([], [], 0, full=len(rows) >= limit)
        for event in rows:
            batch.seqs.append(event.seq)
            batch.lifecycle += event.type in LIFECYCLE_TYPES
            if included(event.type, cfg.detail):
                batch.events.append(event)
                if len(batch.events) >= cfg.batch_size:
                    batch.full = batch.full or event is not rows[-1] or len(rows) >= limit
                    break
        self._urgent = False
        self._more = batch.full
        if not batch.seqs and not self.activity():
            # Nothing to say (e.g. the backlog is all in flight): wait for news.
            self.backlog = Backlog(
                sum(len(b.seqs) for b in self._batches),
                sum(b.lifecycle for b in self._batches),
                self.backlog.oldest_created_at,
            )
            return None
        return batch

    def _start(self, nursery: trio.Nursery, batch: _Batch) -> None:
        self.last_request_at = trio.current_time()
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
        self._batches.append(batch)
        document = build_document(
            source=self.config.source,
            first=batch.first,
            last=batch.last,
            events=batch.events,
            campaigns=[c.to_wire() for c in self.activity()],
            sent_at=time.time(),
            backlog=self.backlog.events,
        )
        nursery.start_soon(self._deliver, batch, document)

    async def _deliver(self, batch: _Batch, document: Mapping[str, Any]) -> None:
        try:
            attempt = await self.post(document)
            if attempt.ok and batch.seqs:
                try:
                    await self.outbox.mark_delivered(batch.seqs)
                except OutboxError as exc:
                    # Sent but not marked: sent again later; the receiver drops duplicates.
                    self._outbox_trouble(exc)
        finally:
            self.in_flight -= 1
            self._batches.remove(batch)
            self._wake.set()
        if attempt.ok:
            self._succeeded(len(batch.seqs))
        else:
            self._failed(attempt)
        await self._refresh_backlog()

    def _succeeded(self, events: int) -> None:
        now = trio.current_time()
        if self.breaker is not Breaker.CLOSED:
            log.info("report: main server answering again; circuit breaker closed")
        self.breaker = Breaker.CLOSED
        self.consecutive_failures = 0
        self.retry_at = -math.inf
        self.last_success = now
        self.last_success_wall = time.time()
        self.last_error = None
        self.events_delivered += events

    def _failed(self, attempt: Attempt) -> None:
        cfg = self.config
        now = trio.current_time()
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = attempt.reason
        ceiling = min(cfg.backoff_cap, cfg.backoff_base * 2.0 ** min(self.consecutive_failures, 30))
        delay = max(cfg.backoff_base, self._rng.uniform(0.0, ceiling))
        if attempt.retry_after is not None:
            delay = max(delay, min(attempt.retry_after, cfg.backoff_cap))
        self.retry_at = max(self.retry_at, now + delay)
        opened = ""
        if self.breaker is Breaker.HALF_OPEN or (
            self.breaker is Breaker.CLOSED and self.consecutive_failures >= cfg.breaker_threshold
        ):
            self.breaker = Breaker.OPEN
            self.breaker_open_until = now + cfg.breaker_open_seconds
            opened = f"; circuit breaker open for {cfg.breaker_open_seconds:g} s"
        log.warning(
            "report: POST to the main server failed: %s; retry in %.1f s (failure %d in a row%s)",
            attempt.reason,
            max(delay, self.breaker_open_until - now if opened else 0.0),
            self.consecutive_failures,
            opened,
        )

    def _outbox_trouble(self, exc: OutboxError) -> None:
        self.last_error = f"outbox: {exc}"
        log.warning("report: cannot use the outbox: %s", exc)

    async def _refresh_backlog(self) -> None:
        try:
            self.backlog = await self.outbox.backlog()
        except OutboxError as exc:
            self._outbox_trouble(exc)
            return
        self._wake.set()

    async def _poll_backlog(self) -> None:
        while True:
            await trio.sleep(self.config.backlog_poll)
            await self._refresh_backlog()

"""In-memory stand-ins for MockClock tests: an outbox, a campaign writing to it, a poster.

Real I/O (threads, sockets) would let the autojump clock leap while it waits, so the
time-rule tests use these; tests/report/test_http.py covers the same paths for real.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from mailpacer.report import Attempt, Backlog, CampaignActivity, OutboxEvent, ReportScheduler
from mailpacer.report.protocol import LIFECYCLE_TYPES

SECRET = b"0123456789abcdef-test-secret"


class MemoryOutbox:
    def __init__(self) -> None:
        self.undelivered: dict[int, OutboxEvent] = {}
        self.delivered: set[int] = set()
        self.types: dict[int, str] = {}  # every event ever added
        self.next_seq = 1

    def add(self, kind: str, campaign: str = "spring", **payload: Any) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.types[seq] = kind
        self.undelivered[seq] = OutboxEvent(
            seq, kind, 1, campaign, seq if kind.startswith("recipient.") else None, payload, 0.0
        )
        return seq

    async def fetch(self, *, after: int, before: int | None, limit: int) -> list[OutboxEvent]:
        await trio.lowlevel.checkpoint()
        out = []
        for seq, event in self.undelivered.items():
            if seq <= after:
                continue
            if before is not None and seq >= before:
                break
            out.append(event)
            if len(out) >= limit:
                break
        return out

    async def mark_delivered(self, seqs: Sequence[int]) -> int:
        await trio.lowlevel.checkpoint()
        done = 0
        for seq in seqs:
            if self.undelivered.pop(seq, None) is not None:
                self.delivered.add(seq)
                done += 1
        return done

    async def backlog(self) -> Backlog:
        await trio.lowlevel.checkpoint()
        lifecycle = sum(e.type in LIFECYCLE_TYPES for e in self.undelivered.values())
        return Backlog(len(self.undelivered), lifecycle, 0.0 if self.undelivered else None)


@dataclass
class Request:
    start: float
    end: float
    document: Mapping[str, Any]
    attempt: Attempt


@dataclass
class FakeServer:
    """The main server as the scheduler sees it: ``post`` with a latency and a behaviour."""

    latency: float = 0.2
    behaviour: Callable[[float], Attempt] = field(default=lambda now: Attempt(True, 200))
    requests: list[Request] = field(default_factory=list)
    stored: dict[int, str] = field(default_factory=dict)  # seq -> type, like the receiver
    duplicates: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    async def post(self, document: Mapping[str, Any]) -> Attempt:
        start = trio.current_time()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await trio.sleep(self.latency)
        finally:
            self.in_flight -= 1
        attempt = self.behaviour(start)
        if attempt.ok:
            for event in document["events"]:
                if event["seq"] in self.stored:
                    self.duplicates += 1
                self.stored[event["seq"]] = event["type"]
        self.requests.append(Request(start, trio.current_time(), document, attempt))
        return attempt

    def starts(self) -> list[float]:
        return sorted(r.start for r in self.requests)

    def gaps(self) -> list[float]:
        s = self.starts()
        return [b - a for a, b in itertools.pairwise(s)]


class Campaigns:
    """The engine's in-memory view of active campaigns (the scheduler's activity source)."""

    def __init__(self) -> None:
        self.active: dict[str, CampaignActivity] = {}

    def __call__(self) -> Sequence[CampaignActivity]:
        return list(self.active.values())

    async def run(
        self,
        outbox: MemoryOutbox,
        scheduler: ReportScheduler | None,
        name: str,
        *,
        per_minute: float,
        seconds: float,
        fail_every: int = 100,
    ) -> None:
        """Write a campaign's events to the outbox at its pace, like the engine would."""
        sent = failed = 0
        outbox.add("campaign.started", name)
        self.active[name] = CampaignActivity(name, per_minute, {"sent": 0, "failed": 0})
        if scheduler is not None:
            scheduler.notify(urgent=True)
        due = 0.0
        start = trio.current_time()
        while trio.current_time() - start < seconds:
            await trio.sleep(1.0)
            due += per_minute / 60.0
            while due >= 1.0:
                due -= 1.0
                if (sent + failed + 1) % fail_every == 0:
                    failed += 1
                    outbox.add("recipient.failed", name, code=550)
                else:
                    sent += 1
                    outbox.add("recipient.sent", name)
            self.active[name] = CampaignActivity(name, per_minute, {"sent": sent, "failed": failed})
        del self.active[name]
        outbox.add("campaign.finished", name)
        if scheduler is not None:
            scheduler.notify(urgent=True)


def within(values: Sequence[float], low: float, high: float = math.inf) -> bool:
    return all(low - 1e-9 <= v <= high + 1e-9 for v in values)

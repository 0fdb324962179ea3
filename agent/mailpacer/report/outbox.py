"""The reporter's view of the ledger's events outbox (``ledger.schema.events``).

The scheduler only needs three things from the outbox, so it depends on the ``Outbox``
protocol; ``LedgerOutbox`` is the real one. Every query runs on the ledger's worker threads
(``AsyncLedger``), never on the Trio thread and never in the send path.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from mailpacer.ledger.schema import campaigns, events
from mailpacer.ledger.threaded import AsyncLedger
from mailpacer.report.protocol import LIFECYCLE_TYPES, OutboxEvent

P = ParamSpec("P")
T = TypeVar("T")

__all__ = ["Backlog", "LedgerOutbox", "Outbox", "OutboxError"]

_MARK_CHUNK = 500  # ids per UPDATE (well under every backend's bound-parameter limit)


class OutboxError(Exception):
    """The outbox could not be read or updated (e.g. the database is down); try later."""


@dataclass(frozen=True, slots=True)
class Backlog:
    """Undelivered events: how many, how many are campaign lifecycle events, the oldest."""

    events: int = 0
    lifecycle: int = 0
    oldest_created_at: float | None = None


class Outbox(Protocol):
    async def fetch(self, *, after: int, before: int | None, limit: int) -> list[OutboxEvent]:
        """Undelivered events with ``after < seq < before``, in sequence order."""

    async def mark_delivered(self, seqs: Sequence[int]) -> int:
        """Mark these events delivered (only after the main server's 2xx)."""

    async def backlog(self) -> Backlog: ...


class LedgerOutbox:
    """``Outbox`` over the ledger's ``events`` table."""

    def __init__(self, ledger: AsyncLedger) -> None:
        self.ledger = ledger
        e = events.c
        self._fetch = (
            sa.select(
                e.id,
                e.type,
                e.campaign_id,
                campaigns.c.name,
                e.recipient_id,
                e.payload,
                e.created_at,
            )
            .select_from(events.outerjoin(campaigns, campaigns.c.id == e.campaign_id))
            .where(e.delivered_at.is_(None), e.id > sa.bindparam("after"))
            .order_by(e.id)
        )
        lifecycle = sa.case((e.type.in_(sorted(LIFECYCLE_TYPES)), 1), else_=0)
        self._count = sa.select(
            sa.func.count(), sa.func.sum(lifecycle), sa.func.min(e.created_at)
        ).where(e.delivered_at.is_(None))

    async def fetch(self, *, after: int, before: int | None, limit: int) -> list[OutboxEvent]:
        return await self.ledger.run(_guarded(self._fetch_sync), after, before, limit)

    async def mark_delivered(self, seqs: Sequence[int]) -> int:
        return await self.ledger.run(_guarded(self._mark_sync), list(seqs))

    async def backlog(self) -> Backlog:
        return await self.ledger.run(_guarded(self._backlog_sync))

    def _mark_sync(self, seqs: list[int]) -> int:
        now = time.time()
        done = 0
        for start in range(0, len(seqs), _MARK_CHUNK):
            chunk = seqs[start : start + _MARK_CHUNK]
            done += self.ledger.sync.mark_events_delivered(chunk, now=now)
        return done

    def _fetch_sync(self, after: int, before: int | None, limit: int) -> list[OutboxEvent]:
        query = self._fetch
        if before is not None:
            query = query.where(events.c.id < before)
        with self.ledger.sync.engine.connect() as conn:
            rows = conn.execute(query.limit(limit), {"after": after}).all()
        return [_event(r._mapping) for r in rows]

    def _backlog_sync(self) -> Backlog:
        with self.ledger.sync.engine.connect() as conn:
            count, lifecycle, oldest = conn.execute(self._count).one()
        return Backlog(int(count or 0), int(lifecycle or 0), oldest)


def _guarded(fn: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except SQLAlchemyError as exc:
            original = getattr(exc, "orig", None) or exc
            raise OutboxError(f"{type(original).__name__}: {original}"[:300]) from None

    return wrapper


def _event(m: Any) -> OutboxEvent:
    try:
        payload = json.loads(m["payload"])
    except ValueError:
        payload = {"unreadable_payload": str(m["payload"])[:200]}
    if not isinstance(payload, dict):
        payload = {"value": payload}
    return OutboxEvent(
        seq=int(m["id"]),
        type=str(m["type"]),
        campaign_id=m["campaign_id"],
        campaign=m["name"],
        recipient_id=m["recipient_id"],
        payload=payload,
        created_at=float(m["created_at"]),
    )

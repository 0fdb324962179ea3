"""One campaign's pipeline: claim -> render -> pace -> mark sending -> SMTP -> record.

Stages are Trio tasks joined by bounded channels, so a slow stage holds back the ones
before it instead of piling up memory. Outcomes are collected synchronously (so they are
never lost, even from a ``finally`` under cancellation) and written in batches.

Stopping (Ctrl-C, SIGTERM): feeding stops at once; a connection finishes the transaction
it is in within ``grace`` seconds; anything not yet on the wire goes back to pending;
a message whose end-of-data dot was written but not answered becomes *uncertain*.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from mailpacer.config import Rate, RelayConfig
from mailpacer.engine.render_pool import RenderJob, RenderPool
from mailpacer.engine.stats import CampaignStats
from mailpacer.ledger.states import RecipientState
from mailpacer.ledger.store import Claimed, Outcome
from mailpacer.ledger.threaded import AsyncLedger
from mailpacer.message.factory import MessageFactory, decode_variables
from mailpacer.message.headers import HeaderInjectionError
from mailpacer.message.render import RenderError
from mailpacer.metrics import Metrics
from mailpacer.pacing.concurrency import Slots
from mailpacer.pacing.guard import ReputationGuard
from mailpacer.pacing.hierarchy import Limit, Pacer
from mailpacer.pacing.policy import RetryPolicy, outcome_for
from mailpacer.pacing.spec import LimitSpec
from mailpacer.smtp.client import (
    Batch,
    OutboundMessage,
    ResultKind,
    SendResult,
    SMTPAuthError,
    SMTPConnectError,
    SMTPConnection,
    SMTPConnectionLost,
    Stage,
    Timeouts,
)
from mailpacer.smtp.connect import open_relay
from mailpacer.smtp.relays import RelayPool

log = logging.getLogger("mailpacer.engine")

__all__ = ["CampaignAborted", "CampaignRunner", "EngineSettings", "RunResult"]

R = RecipientState


#: How long the claimer waits, at first and at most, while all rows are claimed.
_CLAIM_IDLE_MIN = 0.05
_CLAIM_IDLE_MAX = 5.0


class CampaignAborted(Exception):
    """The run cannot go on (no relay reachable, credentials refused, every message failing).

    ``hold``: an operator must act first (credentials, a tripped guard); otherwise (relays
    unreachable) trying again later may succeed by itself.
    """

    def __init__(self, message: str, *, hold: bool = True) -> None:
        super().__init__(message)
        self.hold = hold


@dataclass(frozen=True)
class EngineSettings:
    relays: tuple[RelayConfig, ...]
    concurrency: int = 8
    rate: Rate | None = None
    burst: int = 1
    pipeline_depth: int = 32  # messages handed to one connection at a time
    claim_batch: int = 500
    lease_seconds: float = 600.0
    flush_interval: float = 0.2
    flush_size: int = 500
    max_held_outcomes: int = 5000  # while the ledger is away; then nothing new is sent
    wait_deferred: float = 300.0  # stay to retry deferred recipients due within this
    grace: float = 1.5
    connect_rounds: int = 3  # tries over all relays before giving up
    breaker_threshold: int = 3  # consecutive failures that open a relay's breaker
    breaker_cooldown: float = 30.0  # first open period; doubles on each re-open
    max_relay_wait: float = 60.0  # wait this long for a breaker to half-open, else stop
    # Reputation guard: pause when, among the last guard_window attempts, hard bounces or
    # deferrals exceed these shares (0 turns a guard off).
    guard_bounce_rate: float = 0.05
    guard_deferral_rate: float = 0.30
    guard_window: int = 500
    # Recipient states written to the events outbox for the progress reporter (empty: none).
    event_states: frozenset[str] = frozenset()
    max_consecutive_failures: int = 20  # 0 = never abort on failures
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    local_hostname: str | None = None


@dataclass
class RunResult:
    counts: dict[str, int]
    run: dict[str, int]
    elapsed: float
    interrupted: bool = False
    aborted: str | None = None
    next_retry_at: float | None = None


class CampaignRunner:
    """Sends one campaign from the ledger until nothing is due, it is stopped, or it aborts."""

    def __init__(
        self,
        ledger: AsyncLedger,
        campaign_id: int,
        factory: MessageFactory,
        settings: EngineSettings,
        *,
        owner: str,
        stats: CampaignStats,
        metrics: Metrics | None = None,
        exclusive: bool = True,
        pacer: Pacer | None = None,
        pacing: LimitSpec | None = None,
        render_pool: RenderPool | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``pacer``: the agent's rate-limit hierarchy, shared by its campaigns (default: one
        of this run's own); ``pacing``: this campaign's level in it (default: ``rate`` and
        ``burst`` of the settings); ``wall``: Unix time for the ledger's timestamps (the
        pacer's caps are seeded from them after a restart, so tests give the pacer's)."""
        if not settings.relays:
            raise ValueError("at least one relay is needed")
        self.ledger = ledger
        self.campaign_id = campaign_id
        self.factory = factory
        self.settings = settings
        self.owner = owner
        self.stats = stats
        self.metrics = metrics or Metrics()
        self.exclusive = exclusive
        self.render_pool = render_pool  # render in worker processes (personalized campaigns)
        self.pacer = pacer if pacer is not None else Pacer()
        if pacing is None and settings.rate is not None:
            pacing = LimitSpec(rate=settings.rate, burst=settings.burst)
        self.pacer.add_campaign(stats.name, pacing or LimitSpec())
        self._wall = wall
        self._groups: dict[str, str | None] = {}  # recipient domain -> domain group
        # In-flight caps (max_in_flight) per domain group, held from dispatch to outcome.
        config = self.pacer.config
        self._group_caps = any(spec.max_in_flight for spec in config.groups.values())
        self._group_slots: dict[str | None, Slots | None] = {None: None}
        self._relay_slots: dict[str, Slots | None] = {}
        self._group_shares: dict[str | None, float] = {}  # what is left, by group (ETA)
        self._plan_due = -math.inf  # when (Trio time) to simulate the plan again
        self._suppressions_checked = 0.0
        self._slotted: set[int] = set()  # connections holding one of their relay's slots
        self.heartbeat = 0.0
        self.stopping = False
        self.interrupted = False
        self._outcomes: list[Outcome] = []
        self._flush_wanted = trio.Event()
        self._room = trio.Event()
        self._closing = False
        self._outstanding = 0  # claimed by this run, outcome not yet recorded
        self._consecutive_failures = 0
        self._last_failure = ""
        # Until one message of this run is accepted, hand out one message at a time: a relay
        # that rejects everything then burns max_consecutive_failures recipients, not a
        # whole pipeline's worth.
        self.guard = (
            ReputationGuard(
                settings.guard_bounce_rate or 1.0,
                settings.guard_deferral_rate or 1.0,
                settings.guard_window,
            )
            if settings.guard_bounce_rate or settings.guard_deferral_rate
            else None
        )
        self._event_emails: dict[int, str] = {}  # outcomes waiting for their outbox event
        self.on_events: Callable[[], None] | None = None  # the reporter's wake-up
        self._proven = False
        self._settled = 0  # results (or releases) seen by _on_results/_release
        self._result_arrived = trio.Event()
        self._claim_wake = trio.Event()  # outcomes arrived: claimable rows may be back
        self._abort: CampaignAborted | None = None
        self._feed_scope = trio.CancelScope()
        self._send_deadline_set = False
        self._send_scope = trio.CancelScope()
        self._spare: list[SMTPConnection] = []
        self.relay_pool = RelayPool(
            settings.relays,
            threshold=settings.breaker_threshold,
            cooldown=settings.breaker_cooldown,
            on_change=self._relay_changed,
        )
        self._label = stats.name

    # -- control -----------------------------------------------------------------

    def stop(self) -> None:
        """Graceful stop: no new transaction starts; in-flight ones get ``grace`` seconds."""
        if self.stopping:
            return
        self.stopping = True
        self.interrupted = True
        self._feed_scope.cancel()
        self._send_scope.deadline = trio.current_time() + self.settings.grace

    # -- outcomes ----------------------------------------------------------------

    def _collect(self, outcomes: Sequence[Outcome]) -> None:
        """Synchronous, so it is safe from ``finally`` blocks even while cancelled."""
        self._outcomes.extend(outcomes)
        if len(self._outcomes) >= self.settings.flush_size:
            self._flush_wanted.set()

    def _release(self, messages: Sequence[OutboundMessage], why: str) -> None:
        now = self._wall()
        self._free_in_flight(messages)
        self._note_settled(len(messages))
        self._collect(
            [
                Outcome(_claimed(m).id, R.PENDING, None, why, attempted=False, at=now)
                for m in messages
            ]
        )

    def _on_results(self, results: Sequence[SendResult], relay: str | None = None) -> None:
        now = self._wall()
        outcomes = []
        observe = self.metrics.transaction_seconds.observe
        pacer = self.pacer
        reply_classes: Counter[str] = Counter()  # one metric update per class, not per message
        accepted: Counter[str | None] = Counter()  # messages accepted, per domain group
        for result in results:
            claimed = _claimed(result.message)
            code = result.reply.code if result.reply is not None else None
            reply_classes[f"{code // 100}xx" if code else "none"] += 1
            retry_after = None
            if result.kind is ResultKind.SENT and code is not None and 200 <= code < 300:
                # The common case, counted per group and fed to the pacer once per batch.
                accepted[self._group_of(result.message)] += 1
            elif result.reply is not None:
                # Replies drive the pace: throttles cut the relay's / group's rate (AIMD),
                # "try again in N seconds" pauses them; successes restore it.
                per_recipient = result.stage in (Stage.RCPT, Stage.DATA, Stage.DOT)
                group = self._group_of(result.message) if per_recipient else None
                signal = pacer.observe(
                    result.reply.code, result.reply_text, relay=relay, group=group
                )
                retry_after = signal.retry_after
            outcomes.append(
                outcome_for(
                    result,
                    recipient_id=claimed.id,
                    attempts=claimed.attempts,
                    first_attempt_at=claimed.first_attempt_at,
                    now=now,
                    policy=self.settings.retry,
                    retry_after=retry_after,
                )
            )
            if result.kind is not ResultKind.NOT_SENT:
                observe(result.elapsed)
        for group, n in accepted.items():
            pacer.observe(250, relay=relay, group=group, n=n)
        for reply_class, n in reply_classes.items():
            self.metrics.replies.labels(self._label, relay or "", reply_class).inc(n)
        keep_sent = "sent" in self.settings.event_states or log.isEnabledFor(logging.DEBUG)
        for result, outcome in zip(results, outcomes, strict=True):
            if outcome.attempted and (keep_sent or outcome.state is not R.SENT):
                self._event_emails[outcome.recipient_id] = result.message.recipient
        self._collect(outcomes)
        self._count_failures(outcomes)
        self._note_settled(len(outcomes))

    def _note_settled(self, count: int) -> None:
        self._settled += count
        self._result_arrived.set()
        self._claim_wake.set()

    def _count_failures(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.state is R.FAILED:
                self._consecutive_failures += 1
                self._last_failure = outcome.reply or ""
            elif outcome.state is R.SENT:
                self._consecutive_failures = 0
                self._proven = True
        limit = self.settings.max_consecutive_failures
        if limit and self._consecutive_failures >= limit and self._abort is None:
            self._trip(
                "consecutive_failures",
                f"{self._consecutive_failures} recipients in a row failed permanently "
                f"(last: {self._last_failure}); stopping so the rest of the list is not "
                "burned. Their replies are in the ledger (`mailpacer status --show failed`); "
                "fix the cause, then run the same command again to send the rest.",
            )
        if self.guard is not None:
            trip = self.guard.observe(o.state for o in outcomes if o.attempted)
            if trip is not None and self._abort is None:
                self._trip(
                    trip.guard,
                    f"{trip}; the campaign is paused. Check the list and the replies "
                    "(`mailpacer status --show bounced` / `--show deferred`), then run the "
                    "same command again to continue.",
                )

    def _trip(self, guard: str, why: str) -> None:
        log.error(why, extra={"event": f"guard.{guard}", "campaign": self._label})
        self._abort = CampaignAborted(why)
        self.metrics.guard_tripped.labels(self._label, guard).set(1)
        self.stop()

    async def _flush(self) -> None:
        if not self._outcomes:
            return
        batch, self._outcomes = self._outcomes, []
        events = self._events_for(batch)
        try:
            if events:
                await self.ledger.patiently(
                    self.ledger.sync.record, batch, events, owner=self.owner
                )
            else:
                await self.ledger.patiently(self.ledger.sync.record, batch, owner=self.owner)
        except BaseException:
            self._outcomes[:0] = batch  # not written: keep them for the next try
            raise
        if events and self.on_events is not None:
            self.on_events()
        await self._suppress_bounces(batch)
        self._log_outcomes(batch)
        self._account(batch)
        self._room.set()
        self._claim_wake.set()  # released rows are claimable again

    async def _suppress_bounces(self, batch: Sequence[Outcome]) -> None:
        """A hard bounce (unknown user) puts the address on the suppression list, so no
        later campaign mails it again."""
        emails = self._event_emails
        for outcome in batch:
            if outcome.state is not R.BOUNCED:
                continue
            email = emails.get(outcome.recipient_id)
            if email is None:
                continue
            await self.ledger.patiently(
                self.ledger.sync.add_suppression,
                email,
                reason=(outcome.reply or "hard bounce")[:500],
                source=f"bounce:{self._label}"[:100],
                now=self._wall(),
            )

    async def _wait_for_room(self) -> None:
        """While outcomes cannot be written (the database is away), hold at most
        ``max_held_outcomes`` of them in memory: past that, nothing new is sent."""
        while len(self._outcomes) >= self.settings.max_held_outcomes:
            self._room = trio.Event()
            self._flush_wanted.set()
            await self._room.wait()

    @property
    def alive_at(self) -> float:
        """The heartbeat for /healthz: a run waiting out a database outage is alive (the
        outage shows on /readyz), a run whose loop stopped turning is not."""
        if self.ledger.waiting:
            return trio.current_time()
        return self.heartbeat

    def _log_outcomes(self, batch: Sequence[Outcome]) -> None:
        """Every recipient that did not get its message (INFO), sent ones at DEBUG."""
        emails = self._event_emails
        debug = log.isEnabledFor(logging.DEBUG)
        for o in batch:
            email = emails.pop(o.recipient_id, None)
            if o.state is R.PENDING or (o.state is R.SENT and not debug):
                continue
            log.log(
                logging.DEBUG if o.state is R.SENT else logging.INFO,
                "recipient %s: %s",
                o.recipient_id,
                o.state.value,
                extra={
                    "event": f"recipient.{o.state.value}",
                    "campaign": self._label,
                    "recipient_id": o.recipient_id,
                    "email": email,
                    "state": o.state.value,
                    "code": o.code,
                    "reply": o.reply,
                },
            )

    def _events_for(self, batch: Sequence[Outcome]) -> list[EventItem]:
        wanted = self.settings.event_states
        if not wanted:
            return []
        emails = self._event_emails
        return [
            (
                self.campaign_id,
                o.recipient_id,
                f"recipient.{o.state.value}",
                {"email": emails.get(o.recipient_id), "code": o.code, "reply": o.reply},
            )
            for o in batch
            if o.state.value in wanted
        ]

    def _account(self, batch: Sequence[Outcome]) -> None:
        tally: Counter[tuple[str, bool]] = Counter(
            (outcome.state.value, outcome.attempted) for outcome in batch
        )
        for (state, attempted), n in tally.items():
            self.stats.settled(state, n)
            released = state == R.PENDING.value and not attempted
            self.metrics.messages.labels(self._label, "released" if released else state).inc(n)
        self._outstanding -= len(batch)

    async def _writer(self) -> None:
        while True:
            with trio.move_on_after(self.settings.flush_interval):
                await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            await self._flush()
            self.stats.sample()
            self.heartbeat = trio.current_time()
            self._publish_gauges()
            if self._closing and not self._outcomes:
                return

    def _publish_gauges(self) -> None:
        self.metrics.send_rate.set(self.stats.rate)
        self.metrics.campaign_remaining.labels(self._label).set(self.stats.remaining)
        self._plan_eta()
        eta = self.stats.eta
        self.metrics.campaign_eta_seconds.labels(self._label).set(-1 if eta is None else eta)

    # -- what the pacing plan says: caps after a restart, the ETA -------------------

    async def _seed_caps(self) -> None:
        """The campaign's hour and day caps (and a ramp's day 0) count what the ledger
        recorded sent, also by an earlier process: a restart at 18:00 does not grant a
        second full day's quota."""
        limit = self.pacer.campaign(self._label)
        if limit is None or not limit.caps:
            return
        ledger, sent = self.ledger, {}
        for period, start in limit.periods().items():
            sent[period] = await ledger.patiently(
                ledger.sync.count_sent_since, self.campaign_id, start
            )
        first = None
        if limit.spec.ramp is not None and limit.spec.ramp.since is None:
            first = await ledger.patiently(ledger.sync.first_sent_at, self.campaign_id)
        limit.seed(
            sent_this_hour=sent.get("hour", 0), sent_today=sent.get("day", 0), first_sent_at=first
        )

    async def _plan_groups(self) -> None:
        """What is left, by domain group, once per run (only when a group level paces:
        otherwise the ETA needs just the count). The ETA scales these shares to what is
        left at each update instead of tracking every message's group."""
        if not any(spec.paces for spec in self.pacer.config.groups.values()):
            return
        ledger = self.ledger
        by_domain = await ledger.patiently(ledger.sync.remaining_by_domain, self.campaign_id)
        total = sum(by_domain.values())
        shares: dict[str | None, float] = {}
        for domain, n in by_domain.items():
            group = self.pacer.group_for(domain)
            shares[group] = shares.get(group, 0.0) + n / total
        self._group_shares = shares

    def _plan_eta(self) -> None:
        """The ETA from the pacing plan (rates, windows, caps, ramps, pauses), for the
        gauge and the progress line. Only for a paced path; ``CampaignStats.eta`` takes the
        later of it and the observed rate. The simulation costs ~0.3 ms for thousands left
        and ~20 ms for a million over weeks of windows: at most every 5 s, and never more
        than 0.5% of the time (the stored finish time counts down in between)."""
        pacer, stats = self.pacer, self.stats
        started = trio.current_time()
        if started < self._plan_due:
            return
        relays = self.settings.relays
        relay = relays[0].name if len(relays) == 1 else None  # shared by several: unknown
        limits = pacer.limits_for(self._label, relay=relay)
        paced = bool(self._group_shares) or any(limit.spec.paces for limit in limits)
        if not paced:
            stats.plan(None)
            return
        todo = stats.todo
        remaining: int | dict[str | None, int] = todo
        if self._group_shares:
            remaining = {g: math.ceil(todo * f) for g, f in self._group_shares.items()}
        cost = time.perf_counter()
        finish = pacer.eta(self._label, remaining, relay=relay)
        cost = time.perf_counter() - cost
        self._plan_due = started + max(5.0, 200 * cost)
        stats.plan(math.inf if finish is None else max(0.0, finish - pacer.wall()))

    # -- feeding: claim, render, pace, mark ---------------------------------------

    def _claim_size(self) -> int:
        size = self.settings.claim_batch
        if self.settings.rate is not None:
            # Do not lease much more than ~10 s of work at a slow rate.
            size = min(size, max(1, math.ceil(self.settings.rate.per_second * 10)))
        return size

    async def _apply_suppressions(self) -> None:
        """Pending and deferred recipients on the suppression list become *suppressed*
        before they are rendered (at the start, then every ``suppression_check`` seconds,
        so an address a bounce or an unsubscribe just listed is not mailed again)."""
        ledger = self.ledger
        changed = await ledger.patiently(
            ledger.sync.apply_suppressions, self.campaign_id, now=self._wall()
        )
        self._suppressions_checked = trio.current_time()
        if changed:
            log.info(
                "campaign %s: %d recipient(s) on the suppression list skipped",
                self._label,
                changed,
                extra={"event": "campaign.suppressed", "campaign": self._label},
            )

    async def _claimer(self, render_tx: trio.MemorySendChannel[list[Claimed]]) -> None:
        ledger = self.ledger
        idle = _CLAIM_IDLE_MIN
        async with render_tx:
            while True:
                if trio.current_time() - self._suppressions_checked >= 60.0:
                    await self._apply_suppressions()
                rows = await ledger.patiently(
                    ledger.sync.claim,
                    self.campaign_id,
                    self.owner,
                    self._claim_size(),
                    now=self._wall(),
                    lease_seconds=self.settings.lease_seconds,
                )
                if rows:
                    idle = _CLAIM_IDLE_MIN
                    self._outstanding += len(rows)
                    for row in rows:
                        self.stats.claimed(row.previous)
                    await render_tx.send(rows)
                    continue
                if self._outstanding > 0:
                    # Everything is claimed and outcomes are still coming (they may be
                    # retries): look again when some arrive, at the latest after ``idle``,
                    # which grows to 5 s, so a campaign held by a closed send window or a
                    # day cap does not query the database 20 times a second all night.
                    self._claim_wake = trio.Event()
                    with trio.move_on_after(idle):
                        await self._claim_wake.wait()
                    idle = min(idle * 2, _CLAIM_IDLE_MAX)
                    continue
                due = await ledger.patiently(ledger.sync.next_due, self.campaign_id)
                if due is None or due - self._wall() > self.settings.wait_deferred:
                    return
                await trio.sleep(min(max(0.0, due - self._wall()) + 0.01, 5.0))

    async def _renderer(
        self,
        render_rx: trio.MemoryReceiveChannel[list[Claimed]],
        ready_tx: trio.MemorySendChannel[list[OutboundMessage]],
    ) -> None:
        if self.render_pool is not None:
            await self._render_elsewhere(render_rx, ready_tx)
            return
        chunk = 256
        wants_variables = self.factory.uses_variables
        async with render_rx, ready_tx:
            async for rows in render_rx:
                ready: list[OutboundMessage] = []
                failed: list[Outcome] = []
                for n, row in enumerate(rows, 1):
                    try:
                        message = self.factory.build(
                            row.id,
                            row.email,
                            decode_variables(row.variables) if wants_variables else {},
                            source_row=row.source_row,
                        )
                    except (RenderError, HeaderInjectionError, ValueError) as exc:
                        failed.append(
                            Outcome(row.id, R.FAILED, None, f"message: {exc}", attempted=False)
                        )
                        self._event_emails[row.id] = row.email
                        continue
                    message.tag = row
                    ready.append(message)
                    if len(ready) >= chunk:
                        await ready_tx.send(ready)
                        ready = []
                    elif n % 16 == 0:
                        await trio.lowlevel.checkpoint()  # rendering is CPU: let I/O run
                if failed:
                    self._collect(failed)
                    self._count_failures(failed)  # a template failing everyone stops the run
                if ready:
                    await ready_tx.send(ready)

    async def _render_elsewhere(
        self,
        render_rx: trio.MemoryReceiveChannel[list[Claimed]],
        ready_tx: trio.MemorySendChannel[list[OutboundMessage]],
    ) -> None:
        """The same as rendering here, in the render pool's processes: chunks are submitted
        ahead (two per worker) so the workers never wait for the sender, and come back in
        order."""
        pool = self.render_pool
        assert pool is not None
        chunk = 128
        jobs_tx, jobs_rx = trio.open_memory_channel[tuple[list[Claimed], RenderJob]](
            2 * pool.workers
        )

        async def submit() -> None:
            async with render_rx, jobs_tx:
                async for rows in render_rx:
                    for i in range(0, len(rows), chunk):
                        part = rows[i : i + chunk]
                        work = [(r.id, r.email, r.variables, r.source_row) for r in part]
                        job = pool.submit(work)
                        try:
                            await jobs_tx.send((part, job))
                        except BaseException:
                            job.cancel()
                            raise

        async def collect() -> None:
            async with jobs_rx, ready_tx:
                async for part, job in jobs_rx:
                    results = await job.result()
                    ready: list[OutboundMessage] = []
                    failed: list[Outcome] = []
                    for row, done in zip(part, results, strict=True):
                        if done.error is not None:
                            failed.append(
                                Outcome(row.id, R.FAILED, None, done.error, attempted=False)
                            )
                            self._event_emails[row.id] = row.email
                            continue
                        message = OutboundMessage(
                            done.sender,
                            row.email,
                            done.payload,
                            done.size,
                            done.eight_bit,
                            done.smtputf8,
                        )
                        message.tag = row
                        ready.append(message)
                    if failed:
                        self._collect(failed)
                        self._count_failures(failed)
                    if ready:
                        await ready_tx.send(ready)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit)
            nursery.start_soon(collect)

    async def _dispatcher(
        self,
        ready_rx: trio.MemoryReceiveChannel[list[OutboundMessage]],
        conn_tx: trio.MemorySendChannel[list[OutboundMessage]],
    ) -> None:
        depth = self.settings.pipeline_depth
        workers = self.settings.concurrency
        # One slice feeds every connection a batch: one write-ahead transaction per slice,
        # and batches long enough that the per-batch work is small beside the SMTP work.
        slice_cap = depth * workers
        ledger = self.ledger
        async with ready_rx, conn_tx:
            async for messages in ready_rx:
                position = 0
                while position < len(messages):
                    want = len(messages) - position
                    if not self._proven:
                        want = 1
                    before = self.pacer.waited(self._label)
                    pending = await self._take(messages[position : position + want], slice_cap)
                    self.metrics.rate_limiter_wait.inc(self.pacer.waited(self._label) - before)
                    # _take may reorder (a group that must wait does not hold up the others)
                    taken = {id(m) for m in pending}
                    rest = [m for m in messages[position:] if id(m) not in taken]
                    messages = messages[:position] + pending + rest
                    position += len(pending)
                    size = max(1, min(depth, math.ceil(len(pending) / workers)))
                    try:
                        handed = self._settled + len(pending)
                        # Write-ahead for the whole slice in one transaction (one call per
                        # connection batch cost more than the SMTP work at 32 connections): a
                        # crash leaves uncertain at most this slice plus what is on the wire.
                        ids = [_claimed(m).id for m in pending]
                        await self._wait_for_room()
                        marked = await ledger.patiently(
                            ledger.sync.mark_sending_ids, ids, self.owner, now=self._wall()
                        )
                        if marked is None:  # paused/cancelled: hand nothing over
                            self._release(pending, "campaign paused or cancelled")
                            pending = []
                            self.stop()
                            self.interrupted = False  # exit 1, campaign left paused
                        elif len(marked) < len(ids):
                            pending = self._drop_lost(pending, set(marked))
                            handed = self._settled + len(pending)
                        # Dealt out like cards, not cut in runs: each domain group spreads
                        # over the connections (a slow group in one batch would go one
                        # message at a time on one connection).
                        count = math.ceil(len(pending) / size)
                        batches = [pending[j::count] for j in range(count)]
                        while batches:
                            await conn_tx.send(batches[-1])
                            batches.pop()
                            pending = [m for b in batches for m in b]
                        while not self._proven and self._settled < handed:
                            self._result_arrived = trio.Event()
                            await self._result_arrived.wait()
                    except BaseException:
                        # Marked (or maybe marked) but never handed over: back to pending.
                        self._release(pending, "stopped before sending")
                        raise

    def _drop_lost(self, pending: list[OutboundMessage], marked: set[int]) -> list[OutboundMessage]:
        """Messages whose lease expired and went to another agent: not ours to send, nor to
        release (the new holder has them); they only leave this run's accounting."""
        lost = [m for m in pending if _claimed(m).id not in marked]
        log.warning(
            "campaign %s: %d lease(s) expired and were taken over by another agent; "
            "not sending those",
            self._label,
            len(lost),
            extra={"event": "lease.lost", "campaign": self._label},
        )
        self._outstanding -= len(lost)
        self._note_settled(len(lost))
        self._free_in_flight(lost)
        return [m for m in pending if _claimed(m).id in marked]

    def _group_of(self, message: OutboundMessage) -> str | None:
        domain = message.recipient.rpartition("@")[2].lower()
        try:
            return self._groups[domain]
        except KeyError:
            group = self._groups[domain] = self.pacer.group_for(domain)
            return group

    def _slots_of(self, group: str | None) -> Slots | None:
        """The group's in-flight slots, if it has a ``max_in_flight`` (None: no cap)."""
        try:
            return self._group_slots[group]
        except KeyError:
            assert group is not None
            slots: Slots | None = self.pacer.in_flight_slots(group=group)
            if slots is not None and math.isinf(slots.total):
                slots = None
            self._group_slots[group] = slots
            return slots

    def _free_in_flight(self, messages: Iterable[OutboundMessage]) -> None:
        """Messages answered, given back or dropped: their groups' in-flight slots free."""
        if not self._group_caps:
            return
        held = Counter(self._group_of(m) for m in messages)
        for group, n in held.items():
            slots = self._slots_of(group)
            if slots is not None and n:
                slots.release(n)

    async def _take(self, candidates: list[OutboundMessage], depth: int) -> list[OutboundMessage]:
        """What the pacing hierarchy lets go now, at most ``depth``: every domain group that
        has capacity gives some at once; when none has, wait (in the pacer's fair queue) on
        the group whose turn comes first. A group that must wait never holds up the others.

        A group with ``max_in_flight`` also needs free in-flight slots: the messages taken
        hold them until their outcome (``_free_in_flight``). A full group waits like a
        closed one: for a slot to come back, while the other groups go on."""
        by_group: dict[str | None, list[OutboundMessage]] = {}
        for message in candidates:
            by_group.setdefault(self._group_of(message), []).append(message)
        pacer, name = self.pacer, self._label
        while True:
            granted: list[OutboundMessage] = []
            for group, members in by_group.items():
                room = depth - len(granted)
                if room <= 0:
                    break
                want = min(len(members), room)
                slots = self._slots_of(group)
                if slots is not None:
                    want = min(want, slots.free)
                    if want <= 0:
                        continue
                n = pacer.try_acquire(name, group=group, want=want)
                if n and slots is not None:
                    slots.take(n)  # no checkpoint since ``free``: all n are there
                granted.extend(members[:n])
            if granted:
                return granted
            full = [s for g in by_group if (s := self._slots_of(g)) is not None and not s.free]
            open_groups = [g for g in by_group if (s := self._slots_of(g)) is None or s.free]
            if not open_groups:
                await _first_release(full)
                continue
            group = min(open_groups, key=lambda g: pacer.when(name, group=g))
            members = by_group[group]
            n = await self._acquire_unless_released(group, min(len(members), depth), full)
            slots = self._slots_of(group)
            if n and slots is not None:
                held = slots.take(n)  # others may have taken slots while we waited
                if held < n:
                    pacer.refund(name, n - held, group=group)
                n = held
            if n:
                return members[:n]

    async def _acquire_unless_released(
        self, group: str | None, want: int, full: list[Slots]
    ) -> int:
        """``pacer.acquire`` on ``group``, given up (0) when a full group frees a slot first
        (then every group is looked at again)."""
        pacer, name = self.pacer, self._label
        slots = self._slots_of(group)
        if slots is not None:
            want = max(1, min(want, slots.free))
        if not full:
            return await pacer.acquire(name, group=group, want=want)
        got = 0

        async def take(cancel: trio.CancelScope) -> None:
            nonlocal got
            got = await pacer.acquire(name, group=group, want=want)
            cancel.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(take, nursery.cancel_scope)
                await _first_release(full)
                nursery.cancel_scope.cancel()
        except BaseException:
            if got:
                pacer.refund(name, got, group=group)
            raise
        return got

    async def _feed(self, conn_tx: trio.MemorySendChannel[list[OutboundMessage]]) -> None:
        render_tx, render_rx = trio.open_memory_channel[list[Claimed]](1)
        ready_tx, ready_rx = trio.open_memory_channel[list[OutboundMessage]](2)
        with self._feed_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._claimer, render_tx)
                nursery.start_soon(self._renderer, render_rx, ready_tx)
                nursery.start_soon(self._dispatcher, ready_rx, conn_tx)
        await conn_tx.aclose()

    # -- sending -------------------------------------------------------------------

    async def _connect(self, worker: int) -> SMTPConnection:
        """A session on the relay the pool picks: priority failover, weights, breakers."""
        if self._spare:
            return self._spare.pop()
        pool = self.relay_pool
        count = len(self.settings.relays)
        limit = self.settings.connect_rounds * count
        failures = 0
        permanent: set[str] = set()
        errors: list[str] = []
        while failures < limit:
            relay = pool.choose()
            if relay is None:
                wait = pool.next_retry_in()
                if wait > self.settings.max_relay_wait:
                    break
                await trio.sleep(wait)
                continue
            slots = self.pacer.connection_slots(relay.name)  # max_connections of the relay
            await slots.acquire(1)
            opened = False
            try:
                connection = await open_relay(
                    relay,
                    timeouts=self.settings.timeouts,
                    local_hostname=self.settings.local_hostname,
                )
                opened = True
            except SMTPAuthError as exc:
                pool.failed(relay, str(exc))
                raise CampaignAborted(str(exc)) from None
            except SMTPConnectError as exc:
                self.metrics.connect_failures.labels(relay.name).inc()
                log.warning(
                    "cannot connect to %s: %s",
                    relay.name,
                    exc,
                    extra={"event": "relay.connect_failed", "relay": relay.name},
                )
                pool.failed(relay, str(exc))
                errors.append(str(exc))
                failures += 1
                if not exc.transient:
                    permanent.add(relay.name)
                    if len(permanent) == count:
                        break
                if failures % count == 0 and failures < limit:
                    round_number = failures // count - 1
                    await trio.sleep(min(2.0**round_number, 10.0) * random.uniform(0.8, 1.2))
                continue
            finally:
                if not opened:
                    slots.release(1)
            self._slotted.add(id(connection))
            per_connection = self.pacer.max_messages_per_connection(relay.name)
            if per_connection and not 0 < connection.max_messages <= per_connection:
                connection.max_messages = per_connection
            connection.relay = relay  # its breaker is judged by the session's first outcome
            self.metrics.connections.labels(relay.name).inc()
            return connection
        last = errors[-1] if errors else "every relay's circuit breaker is open"
        raise CampaignAborted(f"no relay could be reached ({last})", hold=False)

    def _relay_changed(self, name: str, state: str, detail: str | None) -> None:
        self.metrics.relays.report(name, state, detail)
        if state != "closed" or detail is not None:
            level = logging.WARNING if state == "open" else logging.INFO
            log.log(
                level,
                "relay %s: circuit breaker %s",
                name,
                state,
                extra={"event": "relay.breaker", "relay": name, "state": state, "reply": detail},
            )

    def _judge_relay(
        self, connection: SMTPConnection, results: Sequence[SendResult], lost: bool, why: str
    ) -> None:
        """A lost session counts against the relay's breaker; an accepted message for it."""
        relay = connection.relay
        if relay is None:
            return
        if lost:
            self.relay_pool.failed(relay, why)
        elif any(r.kind is ResultKind.SENT for r in results):
            self.relay_pool.succeeded(relay)
        else:
            self.relay_pool.released(relay)

    async def _close(self, connection: SMTPConnection) -> None:
        self.metrics.connections.labels(connection.relay_name).dec()
        if id(connection) in self._slotted:
            self._slotted.discard(id(connection))
            relay = connection.relay
            self.pacer.connection_slots(relay.name if relay else connection.relay_name).release(1)
        with trio.CancelScope(shield=True):
            await connection.quit()

    async def _relay_turn(self, relay: str, want: int) -> tuple[int, Slots | None]:
        """How many of ``want`` may go to ``relay`` now: its own level (its rate, or a pause
        a server asked for: "try again in 30 seconds"), and, with ``max_in_flight``, as
        many of its in-flight slots (returned, held for the caller to release)."""
        level = self.pacer.relay(relay)
        if relay not in self._relay_slots:
            capped = self.pacer.in_flight_slots(relay=relay)
            self._relay_slots[relay] = None if math.isinf(capped.total) else capped
        slots = self._relay_slots[relay]
        if slots is None:
            return await level.acquire(want), None
        want = min(want, int(slots.total))
        await slots.acquire(want)
        try:
            allowed = await level.acquire(want)
        except BaseException:
            slots.release(want)
            raise
        if allowed < want:
            slots.release(want - allowed)
        return allowed, slots

    async def _deliver(
        self, worker: int, connection: SMTPConnection | None, messages: list[OutboundMessage]
    ) -> SMTPConnection | None:
        remaining = messages
        retries = 0
        try:
            while remaining:
                if connection is not None and (
                    connection.broken or 0 < connection.max_messages <= connection.messages_sent
                ):
                    await self._close(connection)
                    connection = None
                if connection is None:
                    connection = await self._connect(worker)
                # The relay's own level: its rate, or a pause a server asked for ("try
                # again in 30 seconds"); what it does not allow yet waits for the next turn.
                relay_level = self.pacer.relay(connection.relay_name)
                want = len(remaining)
                if connection.max_messages > 0:  # the session ends after its quota
                    want = min(want, connection.max_messages - connection.messages_sent)
                allowed, on_wire = await self._relay_turn(connection.relay_name, want)
                later = remaining[allowed:]
                batch = Batch(remaining[:allowed], halted=self._halted_for(relay_level))
                detail = "stopped before the relay answered"
                lost = False
                try:
                    await connection.send(batch)
                except SMTPConnectionLost as exc:
                    detail = f"connection lost: {exc}"
                    lost = True
                finally:
                    if on_wire is not None:
                        on_wire.release(allowed)
                    results = batch.finish(detail)
                    unsent = [r.message for r in results if r.kind is ResultKind.NOT_SENT]
                    remaining = unsent + later
                    answered = [r for r in results if r.kind is not ResultKind.NOT_SENT]
                    self._on_results(answered, connection.relay_name)
                    if self._group_caps:
                        self._free_in_flight([r.message for r in answered])
                self._judge_relay(connection, results, lost, detail)
                if self.stopping and remaining:
                    # Paused, cancelled or interrupted mid-batch: what did not start is not
                    # started now (it goes back to pending).
                    self._release(remaining, "stopped before sending")
                    remaining = []
                elif unsent and not lost:
                    pass  # halted after a 4xx or by a relay's pause: the next turn waits
                elif unsent:
                    retries += 1
                    if retries > 3:
                        self._release(remaining, detail)
                        remaining = []
        except BaseException:
            self._release(remaining, "stopped before sending")
            if connection is not None:
                await self._close(connection)
            raise
        return connection

    def _halted_for(self, relay_level: Limit) -> Callable[[Batch], bool]:
        """Asked by a connection before each new transaction of a batch. A stop ends the
        batch there; so does a 4xx, so that its policy (a pause "try again in 30 seconds",
        a slower rate) applies before the next message, and a relay's pause."""
        clock = relay_level.clock

        def halted(batch: Batch) -> bool:
            return self.stopping or batch.transient > 0 or relay_level.paused_until > clock()

        return halted

    async def _worker(
        self, worker: int, conn_rx: trio.MemoryReceiveChannel[list[OutboundMessage]]
    ) -> None:
        connection: SMTPConnection | None = None
        in_flight = self.metrics.in_flight
        async with conn_rx:
            async for messages in conn_rx:
                if self.stopping:
                    self._release(messages, "stopped before sending")
                    continue
                in_flight.inc(len(messages))
                try:
                    connection = await self._deliver(worker, connection, messages)
                finally:
                    in_flight.dec(len(messages))
        if connection is not None:
            await self._close(connection)

    # -- the whole run ---------------------------------------------------------------

    def _workers(self) -> int:
        """SMTP workers: ``concurrency``, but no more than the relays' connection caps allow
        together (a worker waiting for a connection slot would hold its batch meanwhile)."""
        caps = [self.pacer.connection_slots(r.name).total for r in self.settings.relays]
        return int(min(self.settings.concurrency, sum(caps)))

    async def preflight(self) -> None:
        """Open one session before touching the ledger: an unreachable relay changes nothing."""
        self._spare.append(await self._connect(0))

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> RunResult:
        ledger = self.ledger
        if not self._spare:
            await self.preflight()
        try:
            await ledger.run(
                ledger.sync.recover, self.campaign_id, None if self.exclusive else self.owner
            )
            await self._apply_suppressions()
            await self._seed_caps()
            await self._plan_groups()
            self.stats.load(await ledger.run(ledger.sync.state_counts, self.campaign_id))
            self.stats.configured_rate = (
                self.settings.rate.per_second if self.settings.rate else None
            )
            self.heartbeat = trio.current_time()
            task_status.started()
            # Unbuffered: a batch is marked `sending` only once a connection is about to take
            # it, so a crash leaves at most two slices uncertain (docs/ledger.md).
            conn_tx, conn_rx = trio.open_memory_channel[list[OutboundMessage]](0)
            drain_rx = conn_rx.clone()
            try:
                async with trio.open_nursery() as outer:
                    outer.start_soon(self._writer)
                    try:
                        with self._send_scope:
                            async with trio.open_nursery() as pipeline:
                                pipeline.start_soon(self._feed, conn_tx)
                                async with conn_rx:
                                    for worker in range(self._workers()):
                                        pipeline.start_soon(self._worker, worker, conn_rx.clone())
                    finally:
                        self._closing = True
                        self._flush_wanted.set()
            except BaseExceptionGroup as group:
                aborted, rest = group.split(CampaignAborted)
                if rest is not None:
                    raise
                assert aborted is not None
                self._abort = _first_leaf(aborted)
            finally:
                with trio.move_on_after(30) as cleanup:
                    cleanup.shield = True
                    # Anything still queued for a connection never reached the wire.
                    leftovers: list[OutboundMessage] = []
                    try:
                        while True:
                            leftovers.extend(drain_rx.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                        pass
                    drain_rx.close()
                    self._release(leftovers, "stopped before sending")
                    await self._flush()
                    await ledger.run(ledger.sync.release_claimed, self.campaign_id, self.owner)
        finally:
            with trio.CancelScope(shield=True):
                for connection in self._spare:
                    await self._close(connection)
                self._spare.clear()
            with contextlib.suppress(RuntimeError):  # a waiter left behind: keep the level
                self.pacer.remove_campaign(self._label)
        if self._abort is not None:
            raise self._abort
        counts = await ledger.run(ledger.sync.state_counts, self.campaign_id)
        next_due = await ledger.run(ledger.sync.next_due, self.campaign_id)
        return RunResult(
            counts=counts,
            run=dict(self.stats.run),
            elapsed=trio.current_time() - self.stats.started_at,
            interrupted=self.interrupted,
            next_retry_at=next_due,
        )


EventItem = tuple[int | None, int | None, str, dict[str, Any]]


async def _first_release(slots: Sequence[Slots]) -> None:
    """Until any of ``slots`` is given back."""
    if len(slots) == 1:
        await slots[0].wait_released()
        return
    async with trio.open_nursery() as nursery:

        async def watch(one: Slots) -> None:
            await one.wait_released()
            nursery.cancel_scope.cancel()

        for one in slots:
            nursery.start_soon(watch, one)


def _claimed(message: OutboundMessage) -> Claimed:
    tag = message.tag
    assert isinstance(tag, Claimed)
    return tag


def _first_leaf(group: BaseExceptionGroup[CampaignAborted]) -> CampaignAborted:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, CampaignAborted)
    return exc

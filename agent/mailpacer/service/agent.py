"""The agent: sends the ledger's queued campaigns, several at once, until told to stop.

One supervisor loop (its heartbeat is /healthz's "scheduler") starts a CampaignRunner for
each campaign the poller finds with work due, up to ``max_campaigns`` at a time. Operator
commands reach running campaigns through the ledger (a pause or cancel stops the runner at
its next claim); a resume makes the campaign due again for the next poll. While the database
is away, runners wait it out (nothing new is sent) and polls fail quietly until it returns.

Template campaigns render in worker processes (a RenderPool per campaign run, closed when
the run ends). ``[agent] render_workers`` is the budget for all of them: a campaign takes an
even share per campaign slot (``render_workers / max_campaigns``, rounded up) or what is left
of it; one that gets none renders in the agent's process, as prepared messages always do.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from mailpacer.agentconfig import AgentConfig, BounceSettings
from mailpacer.bounces.listener import Bounce, BounceHandler, serve_bounces
from mailpacer.bounces.verp import Verp
from mailpacer.campaign_spec import AGENT_MODE, CampaignSpec, CampaignSpecError, build_factory
from mailpacer.engine.campaign import CampaignAborted, CampaignRunner, EngineSettings
from mailpacer.engine.render_pool import RenderPool
from mailpacer.engine.stats import CampaignStats
from mailpacer.ledger.states import CampaignState
from mailpacer.ledger.store import Campaign
from mailpacer.ledger.threaded import AsyncLedger
from mailpacer.message.factory import MessageFactory
from mailpacer.metrics import Metrics
from mailpacer.pacing.hierarchy import Pacer
from mailpacer.pacing.spec import LimitSpec
from mailpacer.service.poller import LedgerPoller
from mailpacer.unsubscribe import Unsubscribe, UnsubscribeRecorder

__all__ = ["ActiveCampaign", "Agent"]

log = logging.getLogger("mailpacer.agent")

C = CampaignState
RETRY_UNREACHABLE = (30.0, 600.0)  # a campaign whose relays are unreachable: backoff bounds


@dataclass
class ActiveCampaign:
    campaign: Campaign
    stats: CampaignStats
    runner: CampaignRunner | None = None


@dataclass
class _Backoff:
    until: float
    delay: float


@dataclass
class Agent:
    """Owns the poller and the campaign runners; ``run`` until ``stop``."""

    config: AgentConfig
    ledger: AsyncLedger
    metrics: Metrics
    exclusive: bool  # SQLite under our lock: this agent is the only sender
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    event_states: frozenset[str] = frozenset()
    wait_deferred: float = 30.0  # a runner stays for retries due within this; then the poll
    on_events: Callable[[], None] | None = None
    heartbeat: float = 0.0
    active: dict[int, ActiveCampaign] = field(default_factory=dict)
    finished: int = 0
    stopping: bool = False
    _backoff: dict[int, _Backoff] = field(default_factory=dict)
    _found: list[Campaign] = field(default_factory=list)
    _nursery: trio.Nursery | None = None
    poller: LedgerPoller[list[Campaign]] | None = None
    pacer: Pacer | None = None  # the rate-limit hierarchy all campaigns share
    verp: Verp | None = None  # per-recipient return paths, when [bounces] is configured
    bounces: BounceHandler | None = None
    unsubscribes: UnsubscribeRecorder | None = None  # [unsubscribe]: HTTP and mailto requests
    render_busy: int = 0  # render processes the running campaigns hold

    def __post_init__(self) -> None:
        if self.config.unsubscribe is not None:
            self.unsubscribes = UnsubscribeRecorder(
                self.ledger, report=bool(self.event_states), on_events=self._notify
            )

    def _notify(self) -> None:
        """New outbox events: the reporter (``on_events``, set once it runs) sends them soon."""
        if self.on_events is not None:
            self.on_events()

    # -- the loop ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        ledger = self.ledger
        self.pacer = Pacer(self.config.pacing)
        self.poller = LedgerPoller(
            lambda: ledger.run(ledger.sync.runnable_campaigns, time.time()),
            self._deliver,
            interval=self.config.poll_interval,
        )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.config.bounces is not None:
                await self._start_bounce_listener(nursery, self.config.bounces)
            await nursery.start(self.poller.run)
            self.heartbeat = trio.current_time()
            task_status.started()
            while not self.stopping:
                self.heartbeat = trio.current_time()
                self._start_found(nursery)
                await trio.sleep(1.0)
            # stopping: runners finish their in-flight transactions; the poller goes
            for active in list(self.active.values()):
                if active.runner is not None:
                    active.runner.stop()
            while self.active:
                self.heartbeat = trio.current_time()
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()

    async def _start_bounce_listener(self, nursery: trio.Nursery, cfg: BounceSettings) -> None:
        self.verp = Verp(cfg.domain, cfg.secret)
        sink, source = trio.open_memory_channel[Bounce](10_000)
        unsubscribe = self.config.unsubscribe
        mailto = None
        if unsubscribe is not None and unsubscribe.mailto_domain and self.unsubscribes:
            mailto, requests = trio.open_memory_channel[Unsubscribe](10_000)
            nursery.start_soon(self._record_unsubscribes, self.unsubscribes, requests)
        self.bounces = BounceHandler(self.verp, sink, unsubscribe=unsubscribe, unsubscribes=mailto)
        port = await nursery.start(serve_bounces, cfg.listen, self.bounces)
        nursery.start_soon(self._record_bounces, source)
        log.info(
            "bounce listener on %s:%d for bounce+...@%s%s",
            cfg.listen[0],
            port,
            cfg.domain,
            f" and unsubscribe+...@{unsubscribe.mailto_domain}"
            if mailto is not None and unsubscribe is not None
            else "",
            extra={"event": "bounces.listening"},
        )

    @staticmethod
    async def _record_unsubscribes(
        recorder: UnsubscribeRecorder, requests: trio.MemoryReceiveChannel[Unsubscribe]
    ) -> None:
        """Mail to ``unsubscribe+TOKEN@...``: recorded in order, waiting out an outage."""
        async for request in requests:
            await recorder.record(request)

    async def _record_bounces(self, source: trio.MemoryReceiveChannel[Bounce]) -> None:
        ledger = self.ledger
        async for bounce in source:
            reply = bounce.dsn.describe()
            email = await ledger.patiently(
                ledger.sync.mark_bounced,
                bounce.recipient_id,
                reply,
                now=time.time(),
                report=bool(self.event_states),
            )
            log.info(
                "recipient %s bounced (%s); address suppressed",
                bounce.recipient_id,
                reply,
                extra={
                    "event": "recipient.bounced",
                    "recipient_id": bounce.recipient_id,
                    "email": email,
                },
            )
            if self.on_events is not None:
                self.on_events()

    def stop(self) -> None:
        self.stopping = True
        for active in self.active.values():
            if active.runner is not None:
                active.runner.stop()

    def _deliver(self, campaigns: list[Campaign]) -> None:
        self._found = [c for c in campaigns if c.settings.get("mode") == AGENT_MODE]
        if self._nursery is not None:
            self._start_found(self._nursery)

    def _start_found(self, nursery: trio.Nursery) -> None:
        now = trio.current_time()
        while self._found and len(self.active) < self.config.max_campaigns and not self.stopping:
            campaign = self._found.pop(0)
            if campaign.id in self.active:
                continue
            backoff = self._backoff.get(campaign.id)
            if backoff is not None and backoff.until > now:
                continue
            self.active[campaign.id] = ActiveCampaign(campaign, CampaignStats(campaign.name))
            nursery.start_soon(self._send, campaign, name=f"campaign {campaign.name}")

    # -- one campaign ------------------------------------------------------------------------

    def _settings(self, spec: CampaignSpec) -> EngineSettings:
        return EngineSettings(
            relays=self.config.relays,
            concurrency=self.config.concurrency,
            rate=spec.parsed_rate(),
            burst=spec.burst,
            wait_deferred=self.wait_deferred,
            guard_bounce_rate=spec.guard_bounce_rate,
            guard_deferral_rate=spec.guard_deferral_rate,
            event_states=self.event_states,
        )

    async def _send(self, campaign: Campaign) -> None:
        active = self.active[campaign.id]
        try:
            await self._send_one(campaign, active)
        finally:
            del self.active[campaign.id]
            self.metrics.forget_campaign(active.stats)
            if self.poller is not None and not self.stopping:
                self.poller.wake()  # the next queued campaign need not wait a full interval

    async def _send_one(self, campaign: Campaign, active: ActiveCampaign) -> None:
        spec = CampaignSpec.stored(
            campaign.name, campaign.sender, campaign.template_dir, campaign.settings
        )
        try:
            return_path = self.verp.address if self.verp is not None else None
            unsubscribe = self.config.unsubscribe
            list_unsubscribe = (
                functools.partial(unsubscribe.uris, campaign.id) if unsubscribe else None
            )
            factory = await trio.to_thread.run_sync(
                functools.partial(
                    build_factory,
                    spec,
                    return_path=return_path,
                    list_unsubscribe=list_unsubscribe,
                )
            )
            settings = self._settings(spec)
            assert self.pacer is not None  # set by run()
            pacing = spec.limit_spec(self.pacer.config.timezone)
        except CampaignSpecError as exc:
            await self._hold(campaign, f"cannot build the campaign's messages: {exc}")
            return
        workers = self._render_share() if spec.template is not None else 0
        if workers == 0:
            await self._run_campaign(campaign, active, factory, settings, pacing, None)
            return
        pool = await trio.to_thread.run_sync(
            functools.partial(
                RenderPool,
                spec,
                workers,
                verp=(self.verp.domain, self.verp.secret) if self.verp is not None else None,
                unsubscribe=(unsubscribe, campaign.id) if unsubscribe is not None else None,
            )
        )
        self.render_busy += workers
        log.info(
            "campaign %s: rendering in %d worker process%s",
            campaign.name,
            workers,
            "" if workers == 1 else "es",
            extra={"event": "campaign.render_pool", "campaign": campaign.name},
        )
        try:
            await self._run_campaign(campaign, active, factory, settings, pacing, pool)
        finally:
            pool.close()
            self.render_busy -= workers

    def _render_share(self) -> int:
        """Render processes for a template campaign starting now (see the module's doc)."""
        total = self.config.render_workers
        share = -(-total // self.config.max_campaigns)
        return max(0, min(share, total - self.render_busy))

    async def _run_campaign(
        self,
        campaign: Campaign,
        active: ActiveCampaign,
        factory: MessageFactory,
        settings: EngineSettings,
        pacing: LimitSpec,
        pool: RenderPool | None,
    ) -> None:
        ledger = self.ledger
        runner = CampaignRunner(
            ledger,
            campaign.id,
            factory,
            settings,
            owner=self.owner,
            stats=active.stats,
            metrics=self.metrics,
            exclusive=self.exclusive,
            pacer=self.pacer,
            pacing=pacing,
            render_pool=pool,
        )
        runner.on_events = self.on_events
        active.runner = runner
        if self.stopping:
            return
        self.metrics.watch_campaign(active.stats)
        resumed = campaign.status != C.READY.value
        await ledger.patiently(
            ledger.sync.update_campaign, campaign.id, status=C.RUNNING.value, note=None
        )
        await self._event(campaign, "campaign.resumed" if resumed else "campaign.started", {})
        log.info(
            "campaign %s: sending (%s)",
            campaign.name,
            "resumed" if resumed else "started",
            extra={"event": "campaign.running", "campaign": campaign.name},
        )
        aborted: CampaignAborted | None = None
        try:
            await runner.run()
        except CampaignAborted as exc:
            aborted = exc
        with trio.CancelScope(shield=True):
            await self._settle(campaign, runner, aborted)

    async def _settle(
        self, campaign: Campaign, runner: CampaignRunner, aborted: CampaignAborted | None
    ) -> None:
        """Record how this run ended: finished, waiting for retries, held, or retried later."""
        ledger = self.ledger
        counts = await ledger.patiently(ledger.sync.state_counts, campaign.id)
        remaining = sum(counts[s] for s in ("pending", "deferred", "claimed", "sending"))
        if aborted is not None and aborted.hold:
            await self._hold(campaign, str(aborted), counts=counts)
            return
        if aborted is not None:
            backoff = self._backoff.get(campaign.id)
            delay = (
                min(backoff.delay * 2, RETRY_UNREACHABLE[1]) if backoff else RETRY_UNREACHABLE[0]
            )
            delay *= random.uniform(0.8, 1.2)
            self._backoff[campaign.id] = _Backoff(trio.current_time() + delay, delay)
            await ledger.patiently(
                ledger.sync.update_campaign,
                campaign.id,
                note=f"retrying in {delay:.0f} s: {aborted}",
            )
            log.warning(
                "campaign %s: %s; trying again in %.0f s",
                campaign.name,
                aborted,
                delay,
                extra={"event": "campaign.retry_later", "campaign": campaign.name},
            )
            return
        self._backoff.pop(campaign.id, None)
        current = await ledger.patiently(ledger.sync.campaign_by_id, campaign.id)
        stopped = current is not None and (
            current.control == "pause" or current.status == C.CANCELLED.value
        )
        if stopped:
            assert current is not None
            if current.status != C.CANCELLED.value:
                await ledger.patiently(
                    ledger.sync.update_campaign, campaign.id, status=C.PAUSED.value
                )
            event = (
                "campaign.cancelled" if current.status == C.CANCELLED.value else "campaign.paused"
            )
        elif remaining or self.stopping:
            event = "campaign.waiting"  # deferred retries later, or this agent stopped
        else:
            self.finished += 1
            event = "campaign.finished"
            await ledger.patiently(
                ledger.sync.update_campaign,
                campaign.id,
                status=C.FINISHED.value,
                finished_at=time.time(),
            )
        log.info(
            "campaign %s: %s",
            campaign.name,
            event.removeprefix("campaign."),
            extra={"event": event, "campaign": campaign.name},
        )
        if event != "campaign.waiting":
            await self._event(campaign, event, {"counts": counts})

    async def _hold(
        self, campaign: Campaign, why: str, *, counts: dict[str, int] | None = None
    ) -> None:
        """Stop the campaign until an operator resumes it (bad template, guard tripped...)."""
        ledger = self.ledger
        await ledger.patiently(
            ledger.sync.set_campaign_status,
            campaign.id,
            C.PAUSED,
            allowed_from=(C.READY, C.RUNNING, C.PAUSED),
            control="pause",
        )
        await ledger.patiently(ledger.sync.update_campaign, campaign.id, note=why)
        log.error(
            "campaign %s: held until an operator resumes it: %s",
            campaign.name,
            why,
            extra={"event": "campaign.failed", "campaign": campaign.name},
        )
        data: dict[str, Any] = {"reason": why}
        if counts is not None:
            data["counts"] = counts
        await self._event(campaign, "campaign.failed", data)

    async def _event(self, campaign: Campaign, kind: str, data: dict[str, Any]) -> None:
        if not self.event_states:
            return  # no reporter configured: nobody reads the outbox
        ledger = self.ledger
        await ledger.patiently(
            ledger.sync.add_events, [(campaign.id, None, kind, data)], now=time.time()
        )
        if self.on_events is not None:
            self.on_events()

    # -- what the endpoints show --------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "active_campaigns": [a.campaign.name for a in self.active.values()],
            "finished_campaigns": self.finished,
            "polls": self.poller.polls if self.poller else 0,
            "database_outage": self.ledger.in_outage,
            "bounces_received": self.bounces.hard if self.bounces else None,
            "unsubscribes_recorded": self.unsubscribes.recorded if self.unsubscribes else None,
        }

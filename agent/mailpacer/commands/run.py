"""`mailpacer run`: the long-running agent, as systemd runs it.

Reads the TOML configuration (docs/configuration.md), opens and upgrades the ledger, serves
/healthz /readyz /metrics, tells systemd it is ready (``Type=notify``) and feeds its
watchdog, then sends queued campaigns (`mailpacer campaign create`) until SIGTERM or Ctrl-C:
in-flight transactions finish within the grace period, nothing else is started, exit 0.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

import trio

from mailpacer.agentconfig import AgentConfig, load_agent_config
from mailpacer.commands import EXIT, UsageError
from mailpacer.config import ConfigError, parse_relay_url
from mailpacer.http.api import ControlApi
from mailpacer.http.app import OperatorApp
from mailpacer.http.health import HealthState
from mailpacer.http.readiness import Readiness
from mailpacer.http.server import serve_http
from mailpacer.http.unsubscribe import UnsubscribeEndpoint
from mailpacer.ledger.lock import LedgerInUseError, LedgerLock
from mailpacer.ledger.store import Ledger, LedgerError
from mailpacer.ledger.threaded import AsyncLedger
from mailpacer.logs import configure_logging
from mailpacer.metrics import Metrics
from mailpacer.report.client import ReportClient
from mailpacer.report.config import ReportConfig, ReportConfigError
from mailpacer.report.outbox import LedgerOutbox
from mailpacer.report.scheduler import CampaignActivity, ReportScheduler
from mailpacer.service.agent import Agent
from mailpacer.service.sdnotify import SystemdNotifier

__all__ = ["RunOptions", "run_agent"]


@dataclass
class RunOptions:
    config: Path | None = None
    db: str | None = None  # overrides [agent].db
    relays: tuple[str, ...] = ()  # replace [[relay]]
    http: str | None = None  # overrides [agent].http ("" = no HTTP)


def _load(opts: RunOptions) -> AgentConfig:
    try:
        if opts.config is not None:
            config = load_agent_config(opts.config)
        else:
            if not opts.db or not opts.relays:
                raise UsageError(
                    "give --config FILE (see docs/configuration.md), or at least --db URL and "
                    "--relay URL"
                )
            config = AgentConfig(db=opts.db, source="command line")
        if opts.db:
            config = replace(config, db=opts.db)
        if opts.relays:
            config = replace(config, relays=tuple(parse_relay_url(u) for u in opts.relays))
        if opts.http is not None:
            config = replace(config, http=opts.http or None)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if not config.relays:
        raise UsageError("no relay configured: add a [[relay]] table or --relay URL")
    if config.unsubscribe is not None and not config.http:
        raise UsageError('[unsubscribe] needs the HTTP server: --http "" turns it off')
    return config


def _report_config(config: AgentConfig) -> ReportConfig | None:
    if config.report is None:
        return None
    try:
        return ReportConfig(
            url=config.report.url,
            secret=config.report.secret,
            source=config.report.source,
            detail=config.report.detail,  # type: ignore[arg-type]
        )
    except ReportConfigError as exc:
        raise UsageError(str(exc).replace("report.", "[report].", 1)) from None


def run_agent(opts: RunOptions, err: TextIO = sys.stderr) -> int:
    config = _load(opts)
    report = _report_config(config)
    try:
        configure_logging(fmt=config.log_format, level=config.log_level, secrets=config.secrets())
    except OSError as exc:
        raise UsageError(f"cannot set up logging: {exc.strerror}") from None
    try:
        ledger = Ledger(config.db)
    except LedgerError as exc:
        raise UsageError(str(exc)) from None
    lock = LedgerLock(ledger.sqlite_path) if ledger.sqlite_path is not None else None
    try:
        if lock is not None:
            try:
                lock.acquire()
            except LedgerInUseError as exc:
                raise UsageError(str(exc)) from None
        try:
            ledger.check()
            ledger.upgrade()
        except LedgerError as exc:
            raise UsageError(str(exc)) from None
        return trio.run(_serve, config, ledger, report, lock is not None, err)
    finally:
        if lock is not None:
            lock.release()
        ledger.dispose()


async def _serve(
    config: AgentConfig,
    ledger: Ledger,
    report: ReportConfig | None,
    exclusive: bool,
    err: TextIO,
) -> int:
    metrics = Metrics()
    async_ledger = AsyncLedger(ledger)
    metrics.ledger = async_ledger
    agent = Agent(
        config,
        async_ledger,
        metrics,
        exclusive=exclusive,
        event_states=report.event_states if report else frozenset(),
    )
    notifier = SystemdNotifier()
    health = HealthState()
    health.watch("scheduler", lambda: agent.heartbeat, agent.describe)
    async with contextlib.AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        scheduler: ReportScheduler | None = None
        if report is not None:
            client = await stack.enter_async_context(ReportClient(report))

            def activity() -> list[CampaignActivity]:
                return [
                    CampaignActivity(
                        a.stats.name,
                        a.stats.rate * 60,
                        {k: v for k, v in a.stats.counts.items() if k != "active"},
                        a.campaign.id,
                    )
                    for a in agent.active.values()
                ]

            scheduler = ReportScheduler(report, LedgerOutbox(async_ledger), client.post, activity)
            await nursery.start(scheduler.run)
            agent.on_events = scheduler.notify
            metrics.watch_reporter(scheduler)
        if config.http:
            readiness = Readiness.for_ledger(metrics, config.db, scratch=config.scratch_dir)
            if config.data_dir is not None:
                readiness.data_dir = config.data_dir
            if scheduler is not None:
                reporter = scheduler
                readiness.extra["reporter"] = lambda: (reporter.ready, reporter.readiness())
            for relay in config.relays:
                metrics.relays.register(relay.name)
            api = _control_api(config, async_ledger, agent)
            unsubscribe = None
            if config.unsubscribe is not None and agent.unsubscribes is not None:
                unsubscribe = UnsubscribeEndpoint(config.unsubscribe, agent.unsubscribes)
            app = OperatorApp(health, metrics, readiness, api, unsubscribe)
            try:
                binds = await nursery.start(serve_http, app, config.http)
            except OSError as exc:
                raise UsageError(f"cannot listen on {config.http}: {exc.strerror}") from None
            err.write(f"serving /healthz, /readyz and /metrics on {', '.join(binds)}\n")
            if api is not None:
                err.write(f"control API on {binds[0]}/api/v1 (bearer tokens from [api])\n")
            if unsubscribe is not None:
                err.write(
                    f"one-click unsubscribe on {binds[0]}/unsubscribe/ "
                    f"(links: {unsubscribe.settings.base_url}/unsubscribe/...)\n"
                )
            err.flush()

        async def run_then_close(*, task_status: trio.TaskStatus[None]) -> None:
            await agent.run(task_status=task_status)
            nursery.cancel_scope.cancel()  # the agent stopped: so does everything else

        await nursery.start(run_then_close)
        notifier.notify("READY=1\nSTATUS=sending queued campaigns")
        nursery.start_soon(notifier.watchdog, _fresh(health))
        err.write(
            f"mailpacer agent {agent.owner}: ledger {ledger.url_text}, "
            f"{len(config.relays)} relay(s), polling every {config.poll_interval:g}-"
            f"{config.poll_interval + 5:g} s\n"
        )
        err.flush()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                err.write(
                    f"{signal.Signals(signum).name}: stopping (in-flight messages finish)...\n"
                )
                err.flush()
                notifier.notify("STOPPING=1")
                agent.stop()
                nursery.cancel_scope.deadline = trio.current_time() + 30
                break
    return EXIT["ok"]


def _control_api(config: AgentConfig, ledger: AsyncLedger, agent: Agent) -> ControlApi | None:
    """The /api/v1 control API when [api] names a token (otherwise it answers 404)."""
    if config.api_token is None and config.api_read_token is None:
        return None

    def wake() -> None:  # a created or resumed campaign: poll soon (still <= 4 polls/min)
        if agent.poller is not None:
            agent.poller.wake()

    upload_dir = (
        config.data_dir if config.data_dir is not None and config.data_dir.is_dir() else None
    )
    return ControlApi(
        ledger,
        token=config.api_token,
        read_token=config.api_read_token,
        wake=wake,
        upload_dir=upload_dir,
        file_roots=config.api_file_roots,
        max_upload=config.api_max_upload,
    )


def _fresh(health: HealthState) -> Callable[[], bool]:
    """The watchdog is fed only while /healthz would say the agent is alive."""
    return lambda: health.liveness()[0]

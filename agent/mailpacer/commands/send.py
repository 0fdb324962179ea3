"""`mailpacer send`: a one-shot foreground campaign, resumable from its ledger.

Everything an operator can get wrong is checked before the first message goes out:
relay URLs, rate, sender, templates, the CSV header, the ledger; with ``--dry-run``
every recipient is rendered too. Then the list is imported (skipped when unchanged),
and the campaign runs until nothing is due, Ctrl-C, or an abort.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import trio

from mailpacer.campaign_spec import CampaignSpec, CampaignSpecError, load_dkim, parse_sender
from mailpacer.commands import EXIT, UsageError
from mailpacer.config import (
    ConfigError,
    Rate,
    RelayConfig,
    parse_duration,
    parse_rate,
    parse_relay_url,
)
from mailpacer.engine.campaign import CampaignAborted, CampaignRunner, EngineSettings, RunResult
from mailpacer.engine.progress import ProgressDisplay, format_duration
from mailpacer.engine.render_pool import RenderPool, render_workers
from mailpacer.engine.stats import CampaignStats
from mailpacer.http.app import OperatorApp
from mailpacer.http.health import HealthState
from mailpacer.http.readiness import Readiness
from mailpacer.http.server import serve_http
from mailpacer.ledger.lock import LedgerLock
from mailpacer.ledger.states import CampaignState
from mailpacer.ledger.store import Campaign, Ledger, LedgerError
from mailpacer.ledger.threaded import AsyncLedger
from mailpacer.logs import configure_logging
from mailpacer.message.dkim import DkimSigner
from mailpacer.message.factory import MessageFactory, PersonalizedFactory, StaticFactory
from mailpacer.message.headers import HeaderInjectionError
from mailpacer.message.mime import MessageComposer
from mailpacer.message.render import RenderError, TemplateSet
from mailpacer.metrics import Metrics
from mailpacer.pacing.hierarchy import Pacer
from mailpacer.pacing.spec import LimitSpec, PacingConfig, parse_pacing
from mailpacer.report.client import ReportClient
from mailpacer.report.config import ReportConfig, ReportConfigError
from mailpacer.report.outbox import LedgerOutbox
from mailpacer.report.scheduler import CampaignActivity, ReportScheduler
from mailpacer.sources.csvfile import CsvRecipients
from mailpacer.sources.importer import ImportReport, import_rows
from mailpacer.sources.rows import RecipientSource, RecipientSourceError, RejectedRow

log = logging.getLogger("mailpacer.send")

__all__ = ["EXIT", "SendOptions", "UsageError", "run_send"]


@dataclass
class SendOptions:
    recipients: Path | None  # a CSV file, or None with recipients_sql + query
    sender: str
    relays: list[str]
    template: Path | None = None
    message: Path | None = None
    rate: str | None = None
    burst: int = 1
    concurrency: int = 8
    db: str = "sqlite:///./mailpacer.db"
    campaign: str | None = None
    dry_run: bool = False
    json: bool = False
    unsubscribe_url: str | None = None
    http: str | None = None
    wait_deferred: str = "5m"
    max_consecutive_failures: int = 20
    progress: bool | None = None  # None: only when stderr is a terminal
    local_hostname: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    recipients_sql: str | None = None  # CRM database URL (mysql+pymysql://...)
    query: str | None = None  # its SELECT, with an email column
    dkim_key: Path | None = None
    dkim_selector: str | None = None
    dkim_domain: str | None = None  # default: the --from address's domain
    dkim_dns_record: Path | None = None  # the published TXT record, to check the key against
    guard_bounce_rate: str = "5%"  # pause above this share of hard bounces ("0" = off)
    guard_deferral_rate: str = "30%"  # ... or of deferrals
    guard_window: int = 500  # among the last N attempts
    log_format: str = "text"  # or "json" (one object per line)
    log_level: str = "warning"
    log_file: Path | None = None  # default: stderr
    report_url: str | None = None  # the main server's progress endpoint
    report_secret_file: Path | None = None
    report_detail: str = "failures"  # or "all": every recipient outcome
    report_source: str = "mailpacer"  # names this ledger's event sequence at the receiver
    report_wait: str = "30s"  # at the end, wait this long for undelivered events
    pacing: Path | None = None  # a TOML file with a [pacing] table (docs/pacing.md)
    # render templates in this many worker processes (0: in the sender; "auto": CPUs - 1, <= 4)
    render_workers: int | str = "auto"


@dataclass
class Prepared:
    """Validated inputs, ready to run."""

    relays: tuple[RelayConfig, ...]
    rate: Rate | None
    envelope_sender: str
    from_header: str
    factory: MessageFactory
    source: RecipientSource
    campaign_name: str
    wait_deferred: float
    report: ReportConfig | None = None
    report_wait: float = 0.0
    guard: tuple[float, float] = (0.05, 0.30)
    pacing: PacingConfig | None = None
    campaign_pacing: LimitSpec | None = None
    render_workers: int = 0  # processes to start (templates only)


def _parse_sender(text: str) -> tuple[str, str]:
    try:
        return parse_sender(text)
    except CampaignSpecError as exc:
        raise UsageError(str(exc)) from None


def _open_source(opts: SendOptions) -> RecipientSource:
    if (opts.recipients is None) == (opts.recipients_sql is None):
        raise UsageError("give exactly one of --recipients FILE.csv or --recipients-sql URL")
    if opts.recipients_sql is not None and not opts.query:
        raise UsageError("--recipients-sql needs --query 'SELECT email, ... FROM ...'")
    if opts.query is not None and opts.recipients_sql is None:
        raise UsageError("--query goes with --recipients-sql URL")
    try:
        if opts.recipients is not None:
            return CsvRecipients(opts.recipients)
        from mailpacer.sources.sql import SqlRecipients

        assert opts.recipients_sql is not None
        assert opts.query is not None
        return SqlRecipients(opts.recipients_sql, opts.query)
    except RecipientSourceError as exc:
        raise UsageError(str(exc)) from None


def _source_stem(opts: SendOptions) -> str:
    if opts.recipients is not None:
        return opts.recipients.stem
    return "query"


def _load_dkim(opts: SendOptions, envelope_sender: str) -> DkimSigner | None:
    try:
        return load_dkim(
            key=opts.dkim_key,
            selector=opts.dkim_selector,
            domain=opts.dkim_domain,
            envelope_sender=envelope_sender,
            dns_record=opts.dkim_dns_record,
        )
    except CampaignSpecError as exc:
        raise UsageError(str(exc)) from None


def prepare(opts: SendOptions) -> Prepared:
    """Check every input; raise UsageError with an operator-readable message."""
    if not opts.relays and not opts.dry_run:
        raise UsageError("at least one --relay is needed, e.g. --relay smtp://127.0.0.1:25")
    try:
        relays = tuple(parse_relay_url(url) for url in opts.relays)
        rate = parse_rate(opts.rate) if opts.rate else None
        wait_deferred = parse_duration(opts.wait_deferred)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if opts.concurrency < 1 or opts.concurrency > 1000:
        raise UsageError(f"--concurrency {opts.concurrency}: must be between 1 and 1000")
    if opts.burst < 1:
        raise UsageError(f"--burst {opts.burst}: must be at least 1")
    if (opts.template is None) == (opts.message is None):
        raise UsageError("give exactly one of --template DIR or --message FILE.eml")
    envelope_sender, from_header = _parse_sender(opts.sender)
    signer = _load_dkim(opts, envelope_sender)
    source = _open_source(opts)
    factory: MessageFactory
    if opts.template is not None:
        extra = {"unsubscribe_url": opts.unsubscribe_url} if opts.unsubscribe_url else {}
        try:
            templates = TemplateSet(opts.template, extra=extra)
        except Exception as exc:
            raise UsageError(str(exc)) from None
        composer = MessageComposer(
            from_header=from_header,
            message_id_domain=envelope_sender.rpartition("@")[2],
        )
        name = opts.campaign or f"{opts.template.resolve().name}-{_source_stem(opts)}"
        factory = PersonalizedFactory(
            templates, composer, envelope_sender=envelope_sender, campaign=name, signer=signer
        )
    else:
        assert opts.message is not None
        try:
            factory = StaticFactory(opts.message, envelope_sender=envelope_sender, signer=signer)
        except Exception as exc:
            raise UsageError(str(exc)) from None
        name = opts.campaign or f"{opts.message.stem}-{_source_stem(opts)}"
    report, report_wait = _report_config(opts)
    guard = (
        _share("--guard-bounce-rate", opts.guard_bounce_rate),
        _share("--guard-deferral-rate", opts.guard_deferral_rate),
    )
    if opts.guard_window < 1:
        raise UsageError(f"--guard-window {opts.guard_window}: must be at least 1")
    pacing, campaign_pacing = _load_pacing(opts, rate)
    try:
        workers = render_workers(opts.render_workers)
    except ValueError as exc:
        raise UsageError(f"--render-workers {exc}") from None
    return Prepared(
        relays,
        rate,
        envelope_sender,
        from_header,
        factory,
        source,
        name,
        wait_deferred,
        report,
        report_wait,
        guard,
        pacing,
        campaign_pacing,
        workers if opts.template is not None else 0,  # a prepared message needs no rendering
    )


def _load_pacing(
    opts: SendOptions, rate: Rate | None
) -> tuple[PacingConfig | None, LimitSpec | None]:
    """``--pacing FILE.toml``: the hierarchy; --rate / --burst override its campaign level."""
    if opts.pacing is None:
        return None, None
    import tomllib

    try:
        with opts.pacing.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise UsageError(f"cannot read --pacing {str(opts.pacing)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--pacing {opts.pacing}: not valid TOML: {exc}") from None
    if set(document) != {"pacing"}:
        raise UsageError(f"--pacing {opts.pacing}: expected one [pacing] table (docs/pacing.md)")
    try:
        config = parse_pacing(document["pacing"])
    except ConfigError as exc:
        raise UsageError(f"--pacing {opts.pacing}: {exc}") from None
    campaign = config.campaign or LimitSpec(timezone=config.timezone)
    if rate is not None:
        campaign = dataclasses.replace(campaign, rate=rate, burst=opts.burst)
    return config, campaign


def _share(option: str, text: str) -> float:
    from mailpacer.config import ConfigError, parse_share

    try:
        return parse_share(text, option)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _report_config(opts: SendOptions) -> tuple[ReportConfig | None, float]:
    if opts.report_url is None:
        if opts.report_secret_file is not None:
            raise UsageError("--report-secret-file goes with --report-url URL")
        return None, 0.0
    if opts.report_secret_file is None:
        raise UsageError("--report-url needs --report-secret-file FILE (the shared secret)")
    try:
        secret = opts.report_secret_file.read_bytes().strip()
    except OSError as exc:
        path = str(opts.report_secret_file)
        raise UsageError(f"cannot read --report-secret-file {path!r}: {exc.strerror}") from None
    try:
        wait = parse_duration(opts.report_wait)
        config = ReportConfig(
            url=opts.report_url,
            secret=secret,
            source=opts.report_source,
            detail=opts.report_detail,  # type: ignore[arg-type]
        )
    except (ConfigError, ReportConfigError) as exc:
        raise UsageError(str(exc).replace("report.", "--report-", 1)) from None
    return config, wait


# -- dry run -------------------------------------------------------------------------


def _dry_run_rows(prep: Prepared, report: dict[str, Any], seen: set[str]) -> None:
    for row in prep.source:
        report["rows"] += 1
        if isinstance(row, RejectedRow):
            report["rejected"].append({"line": row.line, "reason": row.reason})
            continue
        if row.address.key in seen:
            report["duplicates"] += 1
            continue
        seen.add(row.address.key)
        try:
            prep.factory.build(row.line, row.address.address, row.variables)
        except (RenderError, HeaderInjectionError, ValueError) as exc:
            report["errors"].append(
                {"line": row.line, "email": row.address.address, "error": str(exc)}
            )
            continue
        report["valid"] += 1


def dry_run(prep: Prepared, out: TextIO, *, as_json: bool) -> int:
    """Render and validate every recipient; send nothing, write nothing."""
    seen: set[str] = set()
    report: dict[str, Any] = {"rows": 0, "valid": 0, "duplicates": 0, "rejected": [], "errors": []}
    started = time.monotonic()
    try:
        _dry_run_rows(prep, report, seen)
    except RecipientSourceError as exc:
        raise UsageError(str(exc)) from None
    report["elapsed_seconds"] = round(time.monotonic() - started, 3)
    problems = len(report["rejected"]) + len(report["errors"])
    if as_json:
        report["dry_run"] = True
        out.write(json.dumps(report, indent=2) + "\n")
    else:
        out.write(
            f"dry run: {report['rows']:,} rows, {report['valid']:,} messages render and validate, "
            f"{report['duplicates']:,} duplicate addresses (would be sent once), "
            f"{len(report['rejected']):,} rows rejected, {len(report['errors']):,} render errors\n"
        )
        for item in report["rejected"][:20]:
            out.write(f"  {prep.source.unit} {item['line']}: {item['reason']}\n")
        for item in report["errors"][:20]:
            out.write(f"  {prep.source.unit} {item['line']} ({item['email']}): {item['error']}\n")
        if problems > 40:
            out.write(f"  ... and {problems - 40:,} more (use --json for the full list)\n")
        out.write("nothing was sent.\n")
    return EXIT["ok"] if problems == 0 else EXIT["attention"]


# -- the real run ----------------------------------------------------------------------


def _open_campaign(ledger: Ledger, prep: Prepared, opts: SendOptions) -> Campaign:
    campaign = ledger.campaign_by_name(prep.campaign_name)
    template_ref = str((opts.template or opts.message or Path(".")).resolve())
    if campaign is None:
        return ledger.create_campaign(
            prep.campaign_name,
            sender=prep.from_header,
            template_dir=template_ref,
            source=str(opts.recipients.resolve()) if opts.recipients else prep.source.description,
            settings={"rate": opts.rate, "relays": [r.name for r in prep.relays]},
        )
    if campaign.template_dir != template_ref or campaign.sender != prep.from_header:
        raise UsageError(
            f"campaign {campaign.name!r} already exists in this ledger with another template or "
            f"sender ({campaign.template_dir}, {campaign.sender}); give --campaign NAME to start "
            "a new one, or use the original --template/--from to resume it"
        )
    if campaign.status == CampaignState.CANCELLED:
        raise UsageError(f"campaign {campaign.name!r} was cancelled; it cannot be resumed")
    return campaign


def _import(
    ledger: Ledger, campaign: Campaign, prep: Prepared, err: TextIO, quiet: bool
) -> ImportReport | None:
    try:
        fingerprint = prep.source.fingerprint()
    except RecipientSourceError as exc:
        raise UsageError(str(exc)) from None
    if campaign.source_fingerprint == fingerprint:
        return None
    started = time.monotonic()
    last = [started]

    def progress(report: ImportReport) -> None:
        now = time.monotonic()
        if not quiet and now - last[0] >= 2.0:
            last[0] = now
            err.write(f"importing: {report.rows:,} rows read, {report.imported:,} new\n")
            err.flush()

    try:
        report = import_rows(ledger, campaign.id, prep.source, progress=progress)
    except RecipientSourceError as exc:  # e.g. the CRM connection lost mid-query
        raise UsageError(f"{exc} (what was imported stays; run again to resume)") from None
    ledger.update_campaign(campaign.id, source_fingerprint=fingerprint)
    if not quiet:
        err.write(
            f"imported {report.imported:,} recipients from {prep.source.description} "
            f"({report.rows:,} rows, {report.duplicates:,} duplicates dropped, "
            f"{report.rejected:,} rows rejected) in {time.monotonic() - started:.1f}s\n"
        )
        for row in report.rejected_samples[:20]:
            err.write(f"  {prep.source.unit} {row.line}: {row.reason}\n")
        if report.rejected > 20:
            err.write(f"  ... and {report.rejected - 20:,} more rejected rows (see --json)\n")
    return report


async def _serve(
    runner: CampaignRunner,
    opts: SendOptions,
    prep: Prepared,
    stats: CampaignStats,
    metrics: Metrics,
    err: TextIO,
    show_progress: bool,
    finalize: Callable[[str | None, bool], int],
) -> tuple[RunResult | None, str | None, int]:
    """Run the campaign beside the signal watcher, HTTP endpoints and progress display."""
    health = HealthState()
    health.watch(
        "sender",
        lambda: runner.alive_at,
        lambda: {
            "campaign": stats.name,
            "remaining": stats.remaining,
            "rate": round(stats.rate, 1),
        },
    )
    try:
        await runner.preflight()  # an unreachable relay is reported before the ledger changes
    except CampaignAborted as exc:
        return None, str(exc), await runner.ledger.run(finalize, str(exc), False)
    result: RunResult | None = None
    aborted: str | None = None
    display = ProgressDisplay(stats, err) if show_progress else None
    draining = False
    async with contextlib.AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    if runner.stopping or draining:
                        err.write("\nsecond interrupt: stopping now\n")
                        nursery.cancel_scope.cancel()
                        return
                    err.write(
                        f"\n{signal.Signals(signum).name}: stopping (in-flight messages get "
                        f"{runner.settings.grace:g}s)...\n"
                    )
                    err.flush()
                    runner.stop()

        nursery.start_soon(watch_signals)
        scheduler: ReportScheduler | None = None
        if prep.report is not None:
            client = await stack.enter_async_context(ReportClient(prep.report))
            campaign_id = runner.campaign_id

            def activity() -> list[CampaignActivity]:
                counters = {k: v for k, v in stats.counts.items() if k != "active"}
                return [CampaignActivity(stats.name, stats.rate * 60, counters, campaign_id)]

            scheduler = ReportScheduler(
                prep.report, LedgerOutbox(runner.ledger), client.post, activity
            )
            await nursery.start(scheduler.run)
            runner.on_events = scheduler.notify
        if scheduler is not None:
            metrics.watch_reporter(scheduler)
        if opts.http:
            readiness = Readiness.for_ledger(metrics, opts.db)
            if scheduler is not None:
                reporter = scheduler
                readiness.extra["reporter"] = lambda: (reporter.ready, reporter.readiness())
            for relay in runner.settings.relays:
                metrics.relays.register(relay.name)
            metrics.watch_campaign(stats)
            app = OperatorApp(health, metrics, readiness)
            binds = await nursery.start(serve_http, app, opts.http)
            if not opts.json:
                err.write(f"serving /healthz, /readyz and /metrics on {', '.join(binds)}\n")
        display_scope = trio.CancelScope()
        if display is not None:

            async def show(display: ProgressDisplay) -> None:
                with display_scope:
                    await display.run()

            nursery.start_soon(show, display)
        code = EXIT["interrupted"]
        try:
            result = await runner.run()
        except CampaignAborted as exc:
            aborted = str(exc)
        finally:
            display_scope.cancel()
            if display is not None:
                display.finish()
            interrupted = (result is None and aborted is None) or runner.interrupted
            with trio.CancelScope(shield=True):  # the ledger must say how this run ended
                code = await runner.ledger.run(finalize, aborted, interrupted)
        if scheduler is not None and not nursery.cancel_scope.cancel_called:
            draining = True
            scheduler.notify(urgent=True)
            await _drain_reports(scheduler, prep.report_wait, err, quiet=opts.json)
        nursery.cancel_scope.cancel()
    if result is None and aborted is None:
        runner.interrupted = True
    return result, aborted, code


async def _drain_reports(
    scheduler: ReportScheduler, wait: float, err: TextIO, *, quiet: bool
) -> None:
    """Give the reporter up to ``wait`` seconds to deliver what is left in the outbox."""
    outbox = scheduler.outbox
    backlog = (await outbox.backlog()).events
    if backlog == 0 or wait <= 0:
        return
    if not quiet:
        err.write(
            f"reporting: delivering {backlog:,} event(s) to the main server (up to "
            f"{format_duration(wait)}; Ctrl-C leaves them for the next run)\n"
        )
    with trio.move_on_after(wait):
        while (await outbox.backlog()).events:  # noqa: ASYNC110 - polls the ledger, not memory
            await trio.sleep(0.5)
    left = (await outbox.backlog()).events
    if left and not quiet:
        err.write(
            f"reporting: {left:,} event(s) not delivered yet ({scheduler.last_error or 'waiting'}"
            "); they stay in the ledger's outbox for the next run\n"
        )


def _configure_logs(opts: SendOptions, prep: Prepared) -> None:
    secrets = [r.password for r in prep.relays if r.password]
    if prep.report is not None:
        secrets.append(prep.report.secret.decode("utf-8", "replace"))
    try:
        configure_logging(
            fmt=opts.log_format, level=opts.log_level, file=opts.log_file, secrets=secrets
        )
    except OSError as exc:
        raise UsageError(f"cannot open --log-file {str(opts.log_file)!r}: {exc.strerror}") from None


def run_send(opts: SendOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    prep = prepare(opts)
    _configure_logs(opts, prep)
    if opts.dry_run:
        return dry_run(prep, out, as_json=opts.json)
    try:
        ledger = Ledger(opts.db)
    except LedgerError as exc:
        raise UsageError(str(exc)) from None
    lock = LedgerLock(ledger.sqlite_path) if ledger.sqlite_path is not None else None
    stack = contextlib.ExitStack()
    try:
        if lock is not None:
            lock.acquire()
        ledger.check()
        ledger.upgrade()
        campaign = _open_campaign(ledger, prep, opts)
        pool = _render_pool(opts, prep)  # its workers start while the list is imported
        if pool is not None:
            stack.callback(pool.close)
        report = _import(ledger, campaign, prep, err, quiet=opts.json)
        settings = EngineSettings(
            relays=prep.relays,
            concurrency=opts.concurrency,
            rate=prep.rate,
            burst=opts.burst,
            wait_deferred=prep.wait_deferred,
            max_consecutive_failures=opts.max_consecutive_failures,
            local_hostname=opts.local_hostname,
            event_states=prep.report.event_states if prep.report else frozenset(),
            guard_bounce_rate=prep.guard[0],
            guard_deferral_rate=prep.guard[1],
            guard_window=opts.guard_window,
        )
        stats = CampaignStats(campaign.name)
        metrics = Metrics()
        async_ledger = AsyncLedger(ledger)
        metrics.ledger = async_ledger
        runner = CampaignRunner(
            async_ledger,
            campaign.id,
            prep.factory,
            settings,
            owner=f"{socket.gethostname()}:{os.getpid()}",
            stats=stats,
            metrics=metrics,
            exclusive=lock is not None,
            pacer=Pacer(prep.pacing) if prep.pacing is not None else None,
            pacing=prep.campaign_pacing,
            render_pool=pool,
        )
        show_progress = opts.progress if opts.progress is not None else err.isatty()
        if opts.json:
            show_progress = bool(opts.progress)
        resumed = campaign.status != CampaignState.READY.value
        ledger.update_campaign(campaign.id, status=CampaignState.RUNNING.value)
        if prep.report is not None:
            kind = "campaign.resumed" if resumed else "campaign.started"
            ledger.add_events([(campaign.id, None, kind, {})], now=time.time())

        log.info(
            "campaign %s: sending (%s)",
            campaign.name,
            "resumed" if resumed else "started",
            extra={"event": "campaign.running", "campaign": campaign.name},
        )

        def finalize(aborted: str | None, interrupted: bool) -> int:
            """The campaign's state after this run (and its lifecycle event when reporting)."""
            counts = ledger.state_counts(campaign.id)
            remaining = (
                counts["pending"] + counts["deferred"] + counts["claimed"] + counts["sending"]
            )
            final = CampaignState.PAUSED
            if aborted is not None:
                code, event = EXIT["aborted"], "campaign.failed"
                ledger.update_campaign(campaign.id, status=final.value, note=aborted)
            elif interrupted:
                code, event = EXIT["interrupted"], "campaign.paused"
                ledger.update_campaign(campaign.id, status=final.value)
            elif remaining:
                code, event = EXIT["attention"], "campaign.paused"
                ledger.update_campaign(campaign.id, status=final.value)
            else:
                code = EXIT["attention"] if counts["uncertain"] else EXIT["ok"]
                event = "campaign.finished"
                ledger.update_campaign(
                    campaign.id, status=CampaignState.FINISHED.value, finished_at=time.time()
                )
            log.log(
                logging.ERROR if aborted else logging.INFO,
                "campaign %s: %s%s",
                campaign.name,
                event.removeprefix("campaign."),
                f" ({aborted})" if aborted else "",
                extra={"event": event, "campaign": campaign.name},
            )
            if prep.report is not None:
                data: dict[str, Any] = {"counts": counts}
                if aborted:
                    data["reason"] = aborted
                ledger.add_events([(campaign.id, None, event, data)], now=time.time())
            return code

        result, aborted, code = trio.run(
            _serve, runner, opts, prep, stats, metrics, err, show_progress, finalize
        )
        counts = ledger.state_counts(campaign.id)
        _summary(out, err, opts, ledger, campaign, counts, result, report, aborted, code)
        return code
    finally:
        stack.close()
        if lock is not None:
            lock.release()
        ledger.dispose()


def _render_pool(opts: SendOptions, prep: Prepared) -> RenderPool | None:
    """``--render-workers N|auto``: personalization in N processes beside the SMTP loop."""
    if prep.render_workers <= 0:
        return None
    spec = CampaignSpec(
        name=prep.campaign_name,
        sender=opts.sender,
        template=opts.template,
        message=opts.message,
        unsubscribe_url=opts.unsubscribe_url,
        dkim_key=opts.dkim_key,
        dkim_selector=opts.dkim_selector,
        dkim_domain=opts.dkim_domain,
    )
    return RenderPool(spec, prep.render_workers)


def _summary(
    out: TextIO,
    err: TextIO,
    opts: SendOptions,
    ledger: Ledger,
    campaign: Campaign,
    counts: dict[str, int],
    result: RunResult | None,
    report: ImportReport | None,
    aborted: str | None,
    code: int,
) -> None:
    run = result.run if result else {}
    elapsed = result.elapsed if result else 0.0
    sent_now = run.get("sent", 0)
    next_retry = ledger.next_due(campaign.id)
    if opts.json:
        document = {
            "campaign": campaign.name,
            "ledger": ledger.url_text,
            "counts": counts,
            "this_run": run,
            "elapsed_seconds": round(elapsed, 3),
            "rate_per_second": round(sent_now / elapsed, 1) if elapsed > 0 else 0.0,
            "import": report.as_dict() if report else None,
            "interrupted": code == EXIT["interrupted"],
            "aborted": aborted,
            "next_retry_at": next_retry,
            "exit_code": code,
        }
        out.write(json.dumps(document, indent=2) + "\n")
        return
    if aborted:
        err.write(f"error: campaign stopped: {aborted}\n")
    rate = f"{sent_now / elapsed:,.0f} msg/s" if elapsed > 0 else "-"
    out.write(
        f"campaign {campaign.name!r}: {sent_now:,} sent this run in "
        f"{format_duration(elapsed)} ({rate})\n"
        f"  total: " + ", ".join(f"{k} {v:,}" for k, v in counts.items() if v) + "\n"
        f"  ledger: {ledger.url_text}\n"
    )
    if counts["uncertain"]:
        out.write(
            f"  {counts['uncertain']:,} uncertain (connection lost after the message was handed "
            "over): never resent automatically; see `mailpacer status --show uncertain`\n"
        )
    if code == EXIT["interrupted"]:
        out.write("  interrupted: run the same command again to resume\n")
    elif counts["deferred"] and next_retry is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(next_retry))
        out.write(
            f"  {counts['deferred']:,} deferred; next retry due at {when}: "
            "run the same command again then\n"
        )

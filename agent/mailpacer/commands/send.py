"""`mailpacer send`: a one-shot foreground campaign, resumable from its ledger.

Everything an operator can get wrong is checked before the first message goes out:
relay URLs, rate, sender, templates, the CSV header, the ledger; with ``--dry-run``
every recipient is rendered too. Then the list is imported (skipped when unchanged),
and the campaign runs until nothing is due, Ctrl-C, or an abort.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any, TextIO

import trio

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
from mailpacer.engine.stats import CampaignStats
from mailpacer.http.app import OperatorApp
from mailpacer.http.health import HealthState
from mailpacer.http.server import serve_http
from mailpacer.ledger.lock import LedgerLock
from mailpacer.ledger.states import CampaignState
from mailpacer.ledger.store import Campaign, Ledger, LedgerError
from mailpacer.ledger.threaded import AsyncLedger
from mailpacer.message.address import InvalidAddress, parse_address
from mailpacer.message.factory import MessageFactory, PersonalizedFactory, StaticFactory
from mailpacer.message.headers import HeaderInjectionError, format_mailbox
from mailpacer.message.mime import MessageComposer
from mailpacer.message.render import RenderError, TemplateSet
from mailpacer.metrics import Metrics
from mailpacer.sources.csvfile import CsvRecipients, RejectedRow, file_fingerprint
from mailpacer.sources.importer import ImportReport, import_rows

__all__ = ["EXIT", "SendOptions", "UsageError", "run_send"]

EXIT = {"ok": 0, "attention": 1, "usage": 2, "aborted": 3, "interrupted": 130}


class UsageError(Exception):
    """Bad input: reported in one line, exit code 2, nothing sent."""


@dataclass
class SendOptions:
    recipients: Path
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


@dataclass
class Prepared:
    """Validated inputs, ready to run."""

    relays: tuple[RelayConfig, ...]
    rate: Rate | None
    envelope_sender: str
    from_header: str
    factory: MessageFactory
    source: CsvRecipients
    campaign_name: str
    wait_deferred: float


def _parse_sender(text: str) -> tuple[str, str]:
    name, address = parseaddr(text)
    if not address:
        raise UsageError(f"--from {text!r}: expected an address, e.g. 'News <news@example.com>'")
    try:
        parsed = parse_address(address)
    except InvalidAddress as exc:
        raise UsageError(f"--from {text!r}: {exc}") from None
    try:
        header = format_mailbox(name or None, parsed.address)
    except HeaderInjectionError as exc:
        raise UsageError(f"--from: {exc}") from None
    return parsed.address, header


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
    try:
        source = CsvRecipients(opts.recipients)
    except Exception as exc:
        raise UsageError(str(exc)) from None
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
        name = opts.campaign or f"{opts.template.resolve().name}-{opts.recipients.stem}"
        factory = PersonalizedFactory(
            templates, composer, envelope_sender=envelope_sender, campaign=name
        )
    else:
        assert opts.message is not None
        try:
            factory = StaticFactory(opts.message, envelope_sender=envelope_sender)
        except Exception as exc:
            raise UsageError(str(exc)) from None
        name = opts.campaign or f"{opts.message.stem}-{opts.recipients.stem}"
    return Prepared(
        relays, rate, envelope_sender, from_header, factory, source, name, wait_deferred
    )


# -- dry run -------------------------------------------------------------------------


def dry_run(prep: Prepared, out: TextIO, *, as_json: bool) -> int:
    """Render and validate every recipient; send nothing, write nothing."""
    seen: set[str] = set()
    report: dict[str, Any] = {"rows": 0, "valid": 0, "duplicates": 0, "rejected": [], "errors": []}
    started = time.monotonic()
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
            out.write(f"  line {item['line']}: {item['reason']}\n")
        for item in report["errors"][:20]:
            out.write(f"  line {item['line']} ({item['email']}): {item['error']}\n")
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
            source=str(opts.recipients.resolve()),
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
    fingerprint = file_fingerprint(prep.source.path)
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

    report = import_rows(ledger, campaign.id, prep.source, progress=progress)
    ledger.update_campaign(campaign.id, source_fingerprint=fingerprint)
    if not quiet:
        err.write(
            f"imported {report.imported:,} recipients from {prep.source.path} "
            f"({report.rows:,} rows, {report.duplicates:,} duplicates dropped, "
            f"{report.rejected:,} rows rejected) in {time.monotonic() - started:.1f}s\n"
        )
        for row in report.rejected_samples[:20]:
            err.write(f"  line {row.line}: {row.reason}\n")
        if report.rejected > 20:
            err.write(f"  ... and {report.rejected - 20:,} more rejected rows (see --json)\n")
    return report


async def _serve(
    runner: CampaignRunner,
    opts: SendOptions,
    stats: CampaignStats,
    metrics: Metrics,
    err: TextIO,
    show_progress: bool,
) -> tuple[RunResult | None, str | None]:
    """Run the campaign beside the signal watcher, HTTP endpoints and progress display."""
    health = HealthState()
    health.watch(
        "sender",
        lambda: runner.heartbeat,
        lambda: {
            "campaign": stats.name,
            "remaining": stats.remaining,
            "rate": round(stats.rate, 1),
        },
    )
    try:
        await runner.preflight()  # an unreachable relay is reported before the ledger changes
    except CampaignAborted as exc:
        return None, str(exc)
    result: RunResult | None = None
    aborted: str | None = None
    display = ProgressDisplay(stats, err) if show_progress else None
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    if runner.stopping:
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
        if opts.http:
            binds = await nursery.start(serve_http, OperatorApp(health, metrics), opts.http)
            if not opts.json:
                err.write(f"serving /healthz and /metrics on {', '.join(binds)}\n")
        if display is not None:
            nursery.start_soon(display.run)
        try:
            result = await runner.run()
        except CampaignAborted as exc:
            aborted = str(exc)
        finally:
            nursery.cancel_scope.cancel()
    if display is not None:
        display.finish()
    if result is None and aborted is None:
        runner.interrupted = True
    return result, aborted


def run_send(opts: SendOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    prep = prepare(opts)
    if opts.dry_run:
        return dry_run(prep, out, as_json=opts.json)
    try:
        ledger = Ledger(opts.db)
    except LedgerError as exc:
        raise UsageError(str(exc)) from None
    lock = LedgerLock(ledger.sqlite_path) if ledger.sqlite_path is not None else None
    try:
        if lock is not None:
            lock.acquire()
        ledger.check()
        ledger.upgrade()
        campaign = _open_campaign(ledger, prep, opts)
        report = _import(ledger, campaign, prep, err, quiet=opts.json)
        settings = EngineSettings(
            relays=prep.relays,
            concurrency=opts.concurrency,
            rate=prep.rate,
            burst=opts.burst,
            wait_deferred=prep.wait_deferred,
            max_consecutive_failures=opts.max_consecutive_failures,
            local_hostname=opts.local_hostname,
        )
        stats = CampaignStats(campaign.name)
        metrics = Metrics()
        runner = CampaignRunner(
            AsyncLedger(ledger),
            campaign.id,
            prep.factory,
            settings,
            owner=f"{socket.gethostname()}:{os.getpid()}",
            stats=stats,
            metrics=metrics,
            exclusive=lock is not None,
        )
        show_progress = opts.progress if opts.progress is not None else err.isatty()
        if opts.json:
            show_progress = bool(opts.progress)
        ledger.update_campaign(campaign.id, status=CampaignState.RUNNING.value)
        result, aborted = trio.run(_serve, runner, opts, stats, metrics, err, show_progress)
        counts = ledger.state_counts(campaign.id)
        remaining = counts["pending"] + counts["deferred"] + counts["claimed"] + counts["sending"]
        if aborted is not None:
            code = EXIT["aborted"]
            ledger.update_campaign(campaign.id, status=CampaignState.PAUSED.value, note=aborted)
        elif runner.interrupted:
            code = EXIT["interrupted"]
            ledger.update_campaign(campaign.id, status=CampaignState.PAUSED.value)
        elif remaining:
            code = EXIT["attention"]
            ledger.update_campaign(campaign.id, status=CampaignState.PAUSED.value)
        else:
            code = EXIT["attention"] if counts["uncertain"] else EXIT["ok"]
            ledger.update_campaign(
                campaign.id, status=CampaignState.FINISHED.value, finished_at=time.time()
            )
        _summary(out, err, opts, ledger, campaign, counts, result, report, aborted, code)
        return code
    finally:
        if lock is not None:
            lock.release()
        ledger.dispose()


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

"""`mailpacer campaign create`: queue a campaign in the ledger for the agents to send.

Everything is checked before the ledger changes (sender, templates, DKIM key, rate, the
list's header). The campaign is held (paused, note "importing") while its recipients are
imported, so no agent starts on half a list; an interrupted create is finished by running
the same command again (rows already imported are skipped).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from mailpacer.commands import EXIT, UsageError

__all__ = ["CreateOptions", "run_create"]


@dataclass
class CreateOptions:
    db: str
    name: str
    sender: str
    template: Path | None = None
    message: Path | None = None
    recipients: Path | None = None
    recipients_sql: str | None = None
    query: str | None = None
    rate: str | None = None
    burst: int = 1
    unsubscribe_url: str | None = None
    dkim_key: Path | None = None
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    guard_bounce_rate: str = "5%"
    guard_deferral_rate: str = "30%"
    paused: bool = False
    as_json: bool = False


def _share(option: str, text: str) -> float:
    from mailpacer.config import ConfigError, parse_share

    try:
        return parse_share(text, option)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _source(opts: CreateOptions) -> Any:
    from mailpacer.sources.rows import RecipientSourceError

    if (opts.recipients is None) == (opts.recipients_sql is None):
        raise UsageError("give exactly one of --recipients FILE.csv or --recipients-sql URL")
    if opts.recipients_sql is not None and not opts.query:
        raise UsageError("--recipients-sql needs --query 'SELECT email, ... FROM ...'")
    try:
        if opts.recipients is not None:
            from mailpacer.sources.csvfile import CsvRecipients

            return CsvRecipients(opts.recipients)
        from mailpacer.sources.sql import SqlRecipients

        assert opts.query is not None
        return SqlRecipients(opts.recipients_sql or "", opts.query)
    except RecipientSourceError as exc:
        raise UsageError(str(exc)) from None


def run_create(opts: CreateOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    from mailpacer.campaign_spec import CampaignSpec, CampaignSpecError
    from mailpacer.campaigns import CampaignError, create_campaign, render_sample
    from mailpacer.commands.campaign import open_ledger
    from mailpacer.sources.importer import ImportReport

    spec = CampaignSpec(
        name=opts.name.strip(),
        sender=opts.sender,
        template=opts.template.resolve() if opts.template else None,
        message=opts.message.resolve() if opts.message else None,
        rate=opts.rate,
        burst=opts.burst,
        unsubscribe_url=opts.unsubscribe_url,
        dkim_key=opts.dkim_key.resolve() if opts.dkim_key else None,
        dkim_selector=opts.dkim_selector,
        dkim_domain=opts.dkim_domain,
        guard_bounce_rate=_share("--guard-bounce-rate", opts.guard_bounce_rate),
        guard_deferral_rate=_share("--guard-deferral-rate", opts.guard_deferral_rate),
    )
    try:
        spec.check()
    except CampaignSpecError as exc:
        raise UsageError(str(exc)) from None
    source = _source(opts)
    try:
        render_sample(spec, source)
    except CampaignError as exc:
        raise UsageError(str(exc)) from None
    ledger = open_ledger(opts.db, create=True)
    try:
        started = time.monotonic()
        last = [started]

        def progress(report: ImportReport) -> None:
            now = time.monotonic()
            if not opts.as_json and now - last[0] >= 2.0:
                last[0] = now
                err.write(f"importing: {report.rows:,} rows read, {report.imported:,} new\n")
                err.flush()

        try:
            created = create_campaign(
                ledger,
                spec,
                source,
                source_text=(
                    str(opts.recipients.resolve()) if opts.recipients else source.description
                ),
                paused=opts.paused,
                progress=progress,
                sampled=True,
            )
        except CampaignError as exc:
            raise UsageError(str(exc)) from None
        total, report = created.total, created.report
        document: dict[str, Any] = {
            "campaign": spec.name,
            "status": "paused" if opts.paused else "ready",
            "recipients": total,
            "import": report.as_dict(),
            "ledger": ledger.url_text,
        }
        if opts.as_json:
            out.write(json.dumps(document, indent=2) + "\n")
            return EXIT["ok"]
        out.write(
            f"campaign {spec.name!r} created: {total:,} recipients ({report.rows:,} rows, "
            f"{report.duplicates:,} duplicates dropped, {report.rejected:,} rejected)\n"
        )
        for row in report.rejected_samples[:20]:
            out.write(f"  {source.unit} {row.line}: {row.reason}\n")
        if opts.paused:
            out.write(f"  held: `mailpacer campaign resume {spec.name}` releases it\n")
        else:
            out.write("  queued: a running agent (`mailpacer run`) starts it within 20 s\n")
        return EXIT["ok"]
    finally:
        ledger.dispose()

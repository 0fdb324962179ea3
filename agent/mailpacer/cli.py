"""The `mailpacer` command line: thin parsing in front of mailpacer.commands.

Errors an operator can cause are printed as one line (``error: ...``) with a non-zero
exit code, never as a traceback. Exit codes: 0 done, 1 done but something needs
attention (deferred left, uncertain, dry-run problems), 2 bad input, 3 aborted
(relay unreachable, credentials refused, every message failing), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mailpacer import __version__
from mailpacer.commands import EXIT, UsageError

__all__ = ["build_parser", "main"]

DB_HELP = (
    "ledger database: sqlite:///path/ledger.db or mysql+pymysql://user:pass@host/db "
    "(default sqlite:///./mailpacer.db)"
)


def _add_send(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "send",
        help="send a campaign in the foreground (resumable)",
        description=(
            "Send a personalized campaign to every recipient of a CSV file. Running the same "
            "command again on the same --db resumes it: a recipient already sent is never "
            "sent again. A paused campaign (`mailpacer campaign pause`) is resumed by this "
            "command; a cancelled one is refused."
        ),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--recipients",
        type=Path,
        metavar="FILE.csv",
        help="CSV with a header row; 'email' column required, others become template variables",
    )
    source.add_argument(
        "--recipients-sql",
        metavar="URL",
        help="CRM database to query instead (mysql+pymysql://user:pass@host/db); needs --query",
    )
    p.add_argument(
        "--query",
        metavar="SQL",
        help="with --recipients-sql: one SELECT with an 'email' column; every column becomes "
        "a template variable (streamed, read-only)",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--template",
        type=Path,
        metavar="DIR",
        help="directory with subject.j2, body.txt.j2 and optionally body.html.j2",
    )
    what.add_argument(
        "--message",
        type=Path,
        metavar="FILE.eml",
        help="send this prepared message as is (no personalization)",
    )
    p.add_argument(
        "--from",
        dest="sender",
        required=True,
        metavar="ADDRESS",
        help="sender, e.g. 'News <news@example.com>'",
    )
    p.add_argument(
        "--relay",
        dest="relays",
        action="append",
        default=[],
        metavar="URL",
        help="smtp://host:port, smtps://user:pass@host, smtp+starttls://host:587 "
        "(repeatable; options ?verify=false&cafile=PATH&allow_plain_auth=true)",
    )
    p.add_argument(
        "--rate",
        metavar="N/UNIT",
        help="pace, e.g. 600/min, 10/s, 5000/h (default: as fast as the relay takes)",
    )
    p.add_argument(
        "--burst", type=int, default=1, help="messages that may go back to back (default 1)"
    )
    p.add_argument(
        "--concurrency", type=int, default=8, metavar="N", help="SMTP connections (default 8)"
    )
    p.add_argument(
        "--db",
        default="sqlite:///./mailpacer.db",
        metavar="URL",
        help="ledger database (default sqlite:///./mailpacer.db)",
    )
    p.add_argument("--campaign", metavar="NAME", help="campaign name (default: template-csvname)")
    p.add_argument(
        "--unsubscribe-url",
        metavar="TEMPLATE",
        help="Jinja2 template of the one-click unsubscribe URL (adds List-Unsubscribe)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="render and validate every recipient; send nothing"
    )
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.add_argument("--http", metavar="HOST:PORT", help="serve /healthz and /metrics while sending")
    logs = p.add_argument_group("logs (campaign and recipient ids; never a password)")
    logs.add_argument("--log-format", choices=["text", "json"], default="text")
    logs.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], default="warning"
    )
    logs.add_argument("--log-file", type=Path, metavar="FILE", help="default: standard error")
    guard = p.add_argument_group("reputation guard: pause when too many recipients bounce or defer")
    guard.add_argument(
        "--guard-bounce-rate", default="5%", metavar="SHARE", help="hard bounces (default 5%%)"
    )
    guard.add_argument(
        "--guard-deferral-rate", default="30%", metavar="SHARE", help="deferrals (default 30%%)"
    )
    guard.add_argument(
        "--guard-window", type=int, default=500, metavar="N", help="of the last N attempts"
    )
    rep = p.add_argument_group("progress reports to your main server (docs/report-protocol.md)")
    rep.add_argument("--report-url", metavar="URL", help="POST signed progress reports here")
    rep.add_argument(
        "--report-secret-file", type=Path, metavar="FILE", help="the shared HMAC secret"
    )
    rep.add_argument(
        "--report-detail",
        choices=["failures", "all"],
        default="failures",
        help="list every non-success outcome (default) or every outcome; counters always",
    )
    rep.add_argument(
        "--report-source",
        default="mailpacer",
        metavar="NAME",
        help="names this ledger's event sequence at the receiver (default mailpacer)",
    )
    rep.add_argument(
        "--report-wait",
        default="30s",
        metavar="DURATION",
        help="at the end, wait this long for undelivered events (default 30s)",
    )
    dkim = p.add_argument_group("DKIM signing (RFC 6376)")
    dkim.add_argument("--dkim-key", type=Path, metavar="FILE", help="RSA private key (PEM)")
    dkim.add_argument("--dkim-selector", metavar="NAME", help="selector, e.g. mp2026")
    dkim.add_argument(
        "--dkim-domain", metavar="DOMAIN", help="signing domain (default: the --from domain)"
    )
    dkim.add_argument(
        "--dkim-dns-record",
        type=Path,
        metavar="FILE",
        help="the TXT record published for the selector: the key is checked against it",
    )
    p.add_argument(
        "--render-workers",
        default="auto",
        metavar="N|auto",
        help="render --template messages in N worker processes beside the sending one "
        "(0: in the sending process; default auto: the CPUs available - 1, at most 4)",
    )
    p.add_argument(
        "--pacing",
        type=Path,
        metavar="FILE.toml",
        help="the rate-limit hierarchy (a [pacing] table: global, relays, domain groups, "
        "campaign windows/caps/ramps; see docs/pacing.md); --rate/--burst override its campaign",
    )
    p.add_argument(
        "--wait-deferred",
        default="5m",
        metavar="DURATION",
        help="stay to retry deferred recipients due within this (default 5m)",
    )
    p.add_argument(
        "--max-consecutive-failures",
        type=int,
        default=20,
        metavar="N",
        help="stop when N recipients in a row fail permanently (0: never; default 20)",
    )
    progress = p.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="always show progress",
    )
    progress.add_argument(
        "--no-progress", dest="progress", action="store_false", help="never show progress"
    )


def _add_sink(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sink", help="run the built-in SMTP sink (aiosmtpd inside Trio)")
    p.add_argument(
        "--listen",
        default="127.0.0.1:2525",
        metavar="HOST:PORT",
        help="address to listen on (port 0 picks a free one; default 127.0.0.1:2525)",
    )
    p.add_argument("--store", type=Path, metavar="DIR", help="keep every message as a file in DIR")


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="sink + sample list + personalized campaign, end to end")
    p.add_argument(
        "--recipients", type=int, default=10_000, metavar="N", help="list size (default 10,000)"
    )
    p.add_argument("--rate", metavar="N/UNIT", help="pace the demo campaign (default: unpaced)")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("demo-run"),
        metavar="DIR",
        help="where the list, ledger and received messages go (default ./demo-run)",
    )
    p.add_argument(
        "--template", type=Path, metavar="DIR", help="campaign template (default templates/welcome)"
    )
    p.add_argument(
        "--http",
        default="127.0.0.1:9108",
        metavar="HOST:PORT",
        help="serve /healthz and /metrics here while sending (default 127.0.0.1:9108)",
    )
    p.add_argument("--concurrency", type=int, default=4, metavar="N")


def _add_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="show campaigns and their per-state counts from the ledger")
    p.add_argument("--db", default="sqlite:///./mailpacer.db", metavar="URL")
    p.add_argument("--campaign", metavar="NAME", help="only this campaign")
    p.add_argument("--show", metavar="STATE", help="list recipients in this state (e.g. failed)")
    p.add_argument("--limit", type=int, default=50, help="how many recipients --show lists")
    p.add_argument("--json", action="store_true")


def _add_db(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("db", help="ledger database maintenance")
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = dbsub.add_parser(
        "upgrade",
        help="create the ledger's schema or apply pending migrations",
        description="Create the ledger's tables, or apply the schema migrations this version "
        "of mailpacer has and the database lacks. Safe to run any number of times, and "
        "from several hosts at once.",
    )
    up.add_argument("--db", default="sqlite:///./mailpacer.db", metavar="URL", help=DB_HELP)
    up.add_argument("--json", action="store_true", help="machine-readable output")


def _add_campaign(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "campaign",
        help="list, show, pause, resume, cancel or retry campaigns in the ledger",
        description="Operator decisions on campaigns in the ledger. They work while a sender "
        "runs: pause and cancel take effect before its next batch goes to a connection "
        "(messages in flight finish).",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help_text: str, *, named: bool = True) -> argparse.ArgumentParser:
        a = actions.add_parser(name, help=help_text, description=help_text)
        if named:
            a.add_argument("name", metavar="NAME", help="campaign name (see `campaign list`)")
        a.add_argument("--db", default="sqlite:///./mailpacer.db", metavar="URL", help=DB_HELP)
        a.add_argument("--json", action="store_true", help="machine-readable output")
        return a

    action("list", "campaigns with their status and per-state counts", named=False)
    create = action(
        "create",
        "queue a campaign for the agents (`mailpacer run`): check the template and sender, "
        "import the recipients, then release it (held while importing)",
    )
    what = create.add_mutually_exclusive_group(required=True)
    what.add_argument("--template", type=Path, metavar="DIR", help="subject.j2, body.txt.j2...")
    what.add_argument("--message", type=Path, metavar="FILE.eml", help="a prepared message")
    create.add_argument("--from", dest="sender", required=True, metavar="ADDRESS")
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument("--recipients", type=Path, metavar="FILE.csv", help="CSV with 'email'")
    source.add_argument("--recipients-sql", metavar="URL", help="CRM database (with --query)")
    create.add_argument("--query", metavar="SQL", help="with --recipients-sql: one SELECT")
    create.add_argument("--rate", metavar="N/UNIT", help="pace, e.g. 300/min (default: unpaced)")
    create.add_argument("--burst", type=int, default=1, help="back-to-back messages (default 1)")
    create.add_argument("--unsubscribe-url", metavar="TEMPLATE", help="adds List-Unsubscribe")
    create.add_argument("--dkim-key", type=Path, metavar="FILE", help="RSA private key (PEM)")
    create.add_argument("--dkim-selector", metavar="NAME")
    create.add_argument("--dkim-domain", metavar="DOMAIN", help="default: the --from domain")
    create.add_argument("--guard-bounce-rate", default="5%", metavar="SHARE")
    create.add_argument("--guard-deferral-rate", default="30%", metavar="SHARE")
    create.add_argument(
        "--paused", action="store_true", help="keep it held until `campaign resume NAME`"
    )
    action("show", "one campaign: status, counts, sender, template, next retry")
    action(
        "pause",
        "stop sending: a running sender hands nothing more to its connections, lets the "
        "messages in flight finish and exits (code 1); `mailpacer send` of the campaign "
        "(or `campaign resume`) continues it",
    )
    action("resume", "mark a paused campaign ready again (then run its `mailpacer send`)")
    action(
        "cancel", "stop for good: nothing more is sent and `mailpacer send` refuses the campaign"
    )
    retry = action(
        "retry",
        "put failed, deferred (due now) or uncertain recipients back to pending; the next "
        "`mailpacer send` of the campaign sends them",
    )
    retry.add_argument(
        "--failed",
        dest="states",
        action="append_const",
        const="failed",
        help="recipients that failed permanently (after you fixed the cause)",
    )
    retry.add_argument(
        "--deferred",
        dest="states",
        action="append_const",
        const="deferred",
        help="deferred recipients, due now instead of at their backoff time",
    )
    retry.add_argument(
        "--uncertain",
        dest="states",
        action="append_const",
        const="uncertain",
        help="resend recipients whose delivery is unknown (they may get the message twice)",
    )
    retry.add_argument(
        "--email", action="append", metavar="ADDRESS", help="only this recipient (repeatable)"
    )
    resolve = action(
        "resolve-uncertain",
        "decide about recipients whose connection broke after the message was handed over: "
        "--resend (they may get it twice) or --mark-sent (never sent again)",
    )
    how = resolve.add_mutually_exclusive_group(required=True)
    how.add_argument("--resend", dest="resolution", action="store_const", const="resend")
    how.add_argument("--mark-sent", dest="resolution", action="store_const", const="mark-sent")
    resolve.add_argument(
        "--email", action="append", metavar="ADDRESS", help="only this recipient (repeatable)"
    )


def _add_report_receiver(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "report-receiver",
        help="run the reference receiver of progress reports (for tests, demos, integrators)",
        description="A small HTTP server that does what the main server must do with "
        "mailpacer's progress reports: verify the HMAC signature and its timestamp, refuse "
        "replays, store each event once (SQLite) and print progress. "
        "See docs/report-protocol.md.",
    )
    p.add_argument(
        "--listen", default="127.0.0.1:8088", metavar="HOST:PORT", help="default 127.0.0.1:8088"
    )
    p.add_argument(
        "--secret-file",
        type=Path,
        required=True,
        metavar="FILE",
        help="the shared signing secret (at least 16 bytes; surrounding whitespace ignored)",
    )
    p.add_argument(
        "--db",
        default="sqlite:///./report-receiver.db",
        metavar="URL",
        help="where events go (default sqlite:///./report-receiver.db)",
    )
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this cert")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's key")


def _add_doctor(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor",
        help="check databases, relays (nothing sent), host tuning and disk space",
        description="The operator's health check: each --db (connect time, query latency, "
        "pool), each --relay (connect, EHLO, STARTTLS, AUTH; QUIT before MAIL FROM, so nothing "
        "is sent), host tuning (tuning.json against live sysctl values, nofile) and disk space "
        "of the data directory and the scratch tmpfs. Exit 0 when all pass, 1 when any fails. "
        "Passwords are never printed.",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE.toml",
        help="check what this agent configuration uses (its database, relays, directories)",
    )
    p.add_argument("--db", dest="dbs", action="append", default=[], metavar="URL", help=DB_HELP)
    p.add_argument(
        "--relay", dest="relays", action="append", default=[], metavar="URL", help="repeatable"
    )
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="default: the working directory")
    p.add_argument(
        "--report-url", metavar="URL", help="the main server: post a signed, empty report"
    )
    p.add_argument("--report-secret-file", type=Path, metavar="FILE", help="its HMAC secret")
    p.add_argument("--tuning-json", type=Path, metavar="FILE", help=argparse.SUPPRESS)
    p.add_argument("--scratch", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="per step (default 10)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _add_suppress(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "suppress",
        help="the suppression list: addresses and domains never mailed",
        description="Addresses (a@example.org) and domains (example.org) on this list are "
        "never mailed: their recipients become 'suppressed' before rendering. Hard bounces "
        "add addresses by themselves.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        a = actions.add_parser(name, help=help_text, description=help_text)
        a.add_argument("--db", default="sqlite:///./mailpacer.db", metavar="URL", help=DB_HELP)
        a.add_argument("--json", action="store_true", help="machine-readable output")
        return a

    add = action("add", "suppress addresses or whole domains")
    add.add_argument("values", nargs="+", metavar="ADDRESS|DOMAIN")
    add.add_argument("--reason", help="e.g. unsubscribed, complaint")
    add.add_argument("--source", help="where it came from (default operator)")
    remove = action("remove", "take addresses or domains off the list")
    remove.add_argument("values", nargs="+", metavar="ADDRESS|DOMAIN")
    listing = action("list", "the list, oldest first, a page at a time")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--after", type=int, default=0, metavar="ID", help="the next page")
    imp = action("import", "add every address or domain of a file (one per line, or a CSV)")
    imp.add_argument("file", type=Path, metavar="FILE")
    imp.add_argument("--reason", help="e.g. unsubscribed")
    imp.add_argument("--source", help="default import:FILENAME")


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="the long-running agent: send the ledger's queued campaigns (systemd service)",
        description="Poll the ledger (every 15-20 s) for campaigns queued with `mailpacer "
        "campaign create` and send them, several at once, until SIGTERM. Serves /healthz, "
        "/readyz and /metrics; supports systemd's Type=notify and watchdog. "
        "See docs/configuration.md.",
    )
    p.add_argument("--config", type=Path, metavar="FILE.toml", help="agent configuration")
    p.add_argument("--db", metavar="URL", help="ledger database (overrides [agent].db)")
    p.add_argument(
        "--relay",
        dest="relays",
        action="append",
        default=[],
        metavar="URL",
        help="outbound relay (repeatable; replaces the [[relay]] tables)",
    )
    p.add_argument("--http", metavar="HOST:PORT", help="serve the endpoints here ('' = not at all)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailpacer",
        description="Send e-mail campaigns at exactly the pace asked, with a durable ledger.",
    )
    parser.add_argument("--version", action="version", version=f"mailpacer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_send(sub)
    _add_sink(sub)
    _add_demo(sub)
    _add_status(sub)
    _add_db(sub)
    _add_report_receiver(sub)
    _add_campaign(sub)
    _add_doctor(sub)
    _add_run(sub)
    _add_suppress(sub)
    return parser


def _is_operator_error(exc: Exception) -> bool:
    """Ledger errors an operator causes (bad URL, ledger in use): imported only when raised."""
    from mailpacer.ledger.lock import LedgerInUseError
    from mailpacer.ledger.store import LedgerError

    return isinstance(exc, (LedgerError, LedgerInUseError))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "send":
            from mailpacer.commands.send import SendOptions, run_send

            return run_send(
                SendOptions(
                    recipients=args.recipients,
                    recipients_sql=args.recipients_sql,
                    query=args.query,
                    sender=args.sender,
                    relays=args.relays,
                    template=args.template,
                    message=args.message,
                    rate=args.rate,
                    burst=args.burst,
                    concurrency=args.concurrency,
                    db=args.db,
                    campaign=args.campaign,
                    dry_run=args.dry_run,
                    json=args.json,
                    unsubscribe_url=args.unsubscribe_url,
                    http=args.http,
                    wait_deferred=args.wait_deferred,
                    pacing=args.pacing,
                    render_workers=args.render_workers,
                    max_consecutive_failures=args.max_consecutive_failures,
                    progress=args.progress,
                    dkim_key=args.dkim_key,
                    dkim_selector=args.dkim_selector,
                    dkim_domain=args.dkim_domain,
                    dkim_dns_record=args.dkim_dns_record,
                    log_format=args.log_format,
                    log_level=args.log_level,
                    log_file=args.log_file,
                    guard_bounce_rate=args.guard_bounce_rate,
                    guard_deferral_rate=args.guard_deferral_rate,
                    guard_window=args.guard_window,
                    report_url=args.report_url,
                    report_secret_file=args.report_secret_file,
                    report_detail=args.report_detail,
                    report_source=args.report_source,
                    report_wait=args.report_wait,
                )
            )
        if args.command == "suppress":
            from mailpacer.commands.suppress import SuppressOptions, run_suppress

            return run_suppress(
                SuppressOptions(
                    action=args.action,
                    db=args.db,
                    values=tuple(getattr(args, "values", ())),
                    reason=getattr(args, "reason", None),
                    source=getattr(args, "source", None),
                    file=getattr(args, "file", None),
                    limit=getattr(args, "limit", 100),
                    after=getattr(args, "after", 0),
                    as_json=args.json,
                )
            )
        if args.command == "run":
            from mailpacer.commands.run import RunOptions, run_agent

            return run_agent(
                RunOptions(
                    config=args.config, db=args.db, relays=tuple(args.relays), http=args.http
                )
            )
        if args.command == "sink":
            from mailpacer.commands.sink import run_sink

            return run_sink(str(args.listen), args.store)
        if args.command == "demo":
            from mailpacer.commands.demo import DemoOptions, run_demo

            return run_demo(
                DemoOptions(
                    recipients=args.recipients,
                    rate=args.rate,
                    workdir=args.workdir,
                    template=args.template,
                    http=args.http,
                    concurrency=args.concurrency,
                )
            )
        if args.command == "status":
            from mailpacer.commands.status import run_status

            return run_status(args.db, args.campaign, args.show, args.limit, as_json=args.json)
        if args.command == "db":
            from mailpacer.commands.db import run_db_upgrade

            return run_db_upgrade(args.db, as_json=args.json)
        if args.command == "campaign" and args.action == "create":
            from mailpacer.commands.campaign_create import CreateOptions, run_create

            return run_create(
                CreateOptions(
                    db=args.db,
                    name=args.name,
                    sender=args.sender,
                    template=args.template,
                    message=args.message,
                    recipients=args.recipients,
                    recipients_sql=args.recipients_sql,
                    query=args.query,
                    rate=args.rate,
                    burst=args.burst,
                    unsubscribe_url=args.unsubscribe_url,
                    dkim_key=args.dkim_key,
                    dkim_selector=args.dkim_selector,
                    dkim_domain=args.dkim_domain,
                    guard_bounce_rate=args.guard_bounce_rate,
                    guard_deferral_rate=args.guard_deferral_rate,
                    paused=args.paused,
                    as_json=args.json,
                )
            )
        if args.command == "campaign":
            from mailpacer.commands.campaign import CampaignOptions, run_campaign

            return run_campaign(
                CampaignOptions(
                    action=args.action,
                    db=args.db,
                    name=getattr(args, "name", None),
                    as_json=args.json,
                    states=getattr(args, "states", None) or (),
                    resolution=getattr(args, "resolution", None),
                    emails=getattr(args, "email", None),
                )
            )
        if args.command == "report-receiver":
            from mailpacer.commands.report_receiver import ReceiverOptions, run_report_receiver

            return run_report_receiver(
                ReceiverOptions(
                    listen=args.listen,
                    secret_file=args.secret_file,
                    db=args.db,
                    tls_cert=args.tls_cert,
                    tls_key=args.tls_key,
                )
            )
        if args.command == "doctor":
            from mailpacer.commands.doctor import DoctorOptions, run_doctor

            return run_doctor(
                DoctorOptions(
                    dbs=args.dbs,
                    relays=args.relays,
                    as_json=args.json,
                    data_dir=args.data_dir,
                    tuning_json=args.tuning_json,
                    scratch=args.scratch,
                    timeout=args.timeout,
                    config=args.config,
                    report_url=args.report_url,
                    report_secret_file=args.report_secret_file,
                )
            )
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT["usage"]
    except Exception as exc:
        if not _is_operator_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT["usage"]
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return EXIT["interrupted"]
    parser.error(f"unknown command {args.command}")

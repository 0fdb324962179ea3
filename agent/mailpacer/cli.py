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
from mailpacer.commands.send import EXIT, SendOptions, UsageError, run_send
from mailpacer.ledger.lock import LedgerInUseError
from mailpacer.ledger.store import LedgerError

__all__ = ["build_parser", "main"]


def _add_send(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "send",
        help="send a campaign in the foreground (resumable)",
        description=(
            "Send a personalized campaign to every recipient of a CSV file. Running the same "
            "command again on the same --db resumes it: a recipient already sent is never "
            "sent again."
        ),
    )
    p.add_argument(
        "--recipients",
        required=True,
        type=Path,
        metavar="FILE.csv",
        help="CSV with a header row; 'email' column required, others become template variables",
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "send":
            return run_send(
                SendOptions(
                    recipients=args.recipients,
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
                    max_consecutive_failures=args.max_consecutive_failures,
                    progress=args.progress,
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
    except (UsageError, LedgerError, LedgerInUseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT["usage"]
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return EXIT["interrupted"]
    parser.error(f"unknown command {args.command}")

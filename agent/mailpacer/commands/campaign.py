"""`mailpacer campaign list | show | pause | resume | cancel | retry | resolve-uncertain`.

Operator decisions on a campaign in the ledger. They work while a sender runs: ``pause``
and ``cancel`` take effect before the sender hands its next batch to a connection
(messages in flight finish; the sender then stops with exit code 1); ``retry`` and
``resolve-uncertain --resend`` put recipients back to *pending*, so a running sender picks
them up, or the next ``mailpacer send`` of the campaign does.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from mailpacer.commands import EXIT, UsageError

__all__ = ["CampaignOptions", "run_campaign"]


@dataclass
class CampaignOptions:
    action: str
    db: str
    name: str | None = None
    as_json: bool = False
    states: Sequence[str] = ()  # retry: failed / deferred / uncertain
    resolution: str | None = None  # resolve-uncertain: resend / mark-sent
    emails: Sequence[str] | None = None


def open_ledger(db: str, *, create: bool = False) -> Any:
    """The ledger at ``db``, checked and upgraded; UsageError with the reason otherwise."""
    from mailpacer.ledger.store import Ledger, LedgerError

    try:
        ledger = Ledger(db)
    except LedgerError as exc:
        raise UsageError(str(exc)) from None
    if not create and ledger.sqlite_path is not None and not ledger.sqlite_path.exists():
        raise UsageError(f"no ledger at {ledger.sqlite_path} (give --db URL)")
    try:
        ledger.check()
        ledger.upgrade()
    except LedgerError as exc:
        ledger.dispose()
        raise UsageError(str(exc)) from None
    return ledger


def _document(ledger: Any, campaign: Any) -> dict[str, Any]:
    from mailpacer.campaigns import campaign_document

    return campaign_document(ledger, campaign)


def _line(d: dict[str, Any]) -> str:
    counts = ", ".join(f"{k} {v:,}" for k, v in d["counts"].items() if v) or "no recipients"
    return f"{d['campaign']} [{d['status']}] {d['total']:,} recipients: {counts}"


def run_campaign(opts: CampaignOptions, out: TextIO = sys.stdout) -> int:
    from mailpacer.campaigns import CampaignError

    ledger = open_ledger(opts.db)
    try:
        return _dispatch(ledger, opts, out)
    except CampaignError as exc:
        raise UsageError(str(exc)) from None
    finally:
        ledger.dispose()


def _dispatch(ledger: Any, opts: CampaignOptions, out: TextIO) -> int:
    from mailpacer.campaigns import change_status, find_campaign, requeue

    def emit(document: dict[str, Any], text: str) -> int:
        out.write(json.dumps(document, indent=2) + "\n" if opts.as_json else text + "\n")
        return EXIT["ok"]

    if opts.action == "list":
        documents = [_document(ledger, c) for c in ledger.list_campaigns()]
        if opts.as_json:
            return emit({"ledger": ledger.url_text, "campaigns": documents}, "")
        if not documents:
            return emit({}, f"no campaigns in {ledger.url_text}")
        return emit({}, "\n".join(_line(d) for d in documents))

    assert opts.name is not None
    campaign = find_campaign(ledger, opts.name)
    name = campaign.name

    if opts.action == "show":
        d = _document(ledger, campaign)
        lines = [_line(d), f"  sender: {d['sender']}", f"  template: {d['template']}"]
        if d["source"]:
            lines.append(f"  recipients from: {d['source']}")
        if d["next_retry_at"] is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["next_retry_at"]))
            lines.append(f"  next retry due at {when}")
        if d["counts"]["uncertain"]:
            lines.append(
                f"  {d['counts']['uncertain']:,} uncertain: decide with `mailpacer campaign "
                f"resolve-uncertain {name} --resend | --mark-sent`"
            )
        return emit(d, "\n".join(lines))

    if opts.action in ("pause", "resume", "cancel"):
        changed = change_status(ledger, campaign, opts.action)
        done = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[opts.action]
        notes = {
            "pause": "a running sender stops at its next claim (messages in flight finish); "
            "`mailpacer send` of the campaign, or `campaign resume`, continues it",
            "resume": "the next `mailpacer send` of the campaign continues where it stopped",
            "cancel": "nothing more will be sent; `mailpacer send` refuses it from now on",
        }
        d = _document(ledger, changed)
        return emit(d, f"campaign {name!r} {done}: {notes[opts.action]}")

    if opts.action in ("retry", "resolve-uncertain"):
        if opts.action == "retry":
            result = requeue(ledger, campaign, states=opts.states, emails=opts.emails)
        else:
            if opts.resolution is None:
                raise UsageError("say how to resolve: --resend or --mark-sent")
            result = requeue(ledger, campaign, resolution=opts.resolution, emails=opts.emails)
        changed_counts = result.changed
        d = _document(ledger, result.campaign)
        d["changed"] = changed_counts
        total = sum(changed_counts.values())
        what = ", ".join(f"{n:,} {s}" for s, n in changed_counts.items())
        if opts.resolution == "mark-sent":
            text = f"campaign {name!r}: {what} marked sent (they will not be sent again)"
        elif total:
            text = (
                f"campaign {name!r}: {what} back to pending; run the campaign's "
                "`mailpacer send` command again to send them"
            )
        else:
            text = f"campaign {name!r}: nothing to change ({what})"
        return emit(d, text)

    raise UsageError(f"unknown campaign action {opts.action!r}")

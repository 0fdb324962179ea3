"""`mailpacer status`: campaigns and per-state counts, straight from the ledger."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from mailpacer.commands import UsageError
from mailpacer.engine.progress import format_duration
from mailpacer.ledger.states import CampaignState, RecipientState
from mailpacer.ledger.store import Campaign, Ledger

__all__ = ["run_status"]

ORDER = [s.value for s in RecipientState]


def _recent_rate(ledger: Ledger, campaign: Campaign) -> float:
    """Messages sent per second over the last minute (0 when idle)."""
    import sqlalchemy as sa

    from mailpacer.ledger.schema import recipients

    since = time.time() - 60
    with ledger.engine.connect() as conn:
        sent = conn.execute(
            sa.select(sa.func.count()).where(
                recipients.c.campaign_id == campaign.id,
                recipients.c.status == RecipientState.SENT.value,
                recipients.c.sent_at >= since,
            )
        ).scalar_one()
    return float(sent) / 60.0


def _planned_eta(ledger: Ledger, campaign: Campaign, todo: int) -> float | None:
    """Seconds until done by the campaign's own pacing level (its rate, windows, hour/day
    caps with what the ledger recorded sent, ramp); None if it has none. The agent's shared
    levels (global, relay, group) live in its configuration, which status does not read."""
    from mailpacer.campaign_spec import CampaignSpec, CampaignSpecError
    from mailpacer.pacing import Limit, estimate_finish

    try:
        spec = CampaignSpec.stored(
            campaign.name, campaign.sender, campaign.template_dir, campaign.settings
        ).limit_spec()
    except CampaignSpecError:
        return None
    if not spec.paces:
        return None
    now = time.time()
    limit = Limit("campaign", spec, clock=lambda: now, wall=lambda: now)
    sent = {p: ledger.count_sent_since(campaign.id, t) for p, t in limit.periods().items()}
    first = ledger.first_sent_at(campaign.id) if spec.ramp and not spec.ramp.since else None
    limit.seed(sent_this_hour=sent.get("hour", 0), sent_today=sent.get("day", 0),
               first_sent_at=first)  # fmt: skip
    finish = estimate_finish(todo, [limit], now=now, wall=now)
    return None if finish is None else max(0.0, finish - now)


def run_status(
    db: str,
    campaign_name: str | None,
    show: str | None,
    limit: int,
    *,
    as_json: bool,
    out: TextIO = sys.stdout,
) -> int:
    if show is not None and show not in ORDER:
        raise UsageError(f"--show {show!r}: expected one of {', '.join(ORDER)}")
    ledger = Ledger(db)
    if ledger.sqlite_path is not None and not ledger.sqlite_path.exists():
        raise UsageError(f"no ledger at {ledger.sqlite_path} (give --db)")
    try:
        ledger.check()
        ledger.upgrade()
        campaigns = ledger.list_campaigns()
        if campaign_name is not None:
            campaigns = [c for c in campaigns if c.name == campaign_name]
            if not campaigns:
                raise UsageError(f"no campaign named {campaign_name!r} in {ledger.url_text}")
        documents: list[dict[str, Any]] = []
        for campaign in campaigns:
            counts = ledger.state_counts(campaign.id)
            total = sum(counts.values())
            todo = counts["pending"] + counts["claimed"] + counts["sending"] + counts["deferred"]
            running = campaign.status == CampaignState.RUNNING.value
            rate = _recent_rate(ledger, campaign) if todo and running else 0.0
            # the later of the plan (windows, caps...) and the measured rate
            etas = [todo / rate] if rate > 0 else []
            planned = _planned_eta(ledger, campaign, todo) if todo and running else None
            if planned is not None:
                etas.append(planned)
            document: dict[str, Any] = {
                "campaign": campaign.name,
                "status": campaign.status,
                "total": total,
                "counts": counts,
                "rate_per_second": round(rate, 2),
                "eta_seconds": round(max(etas)) if etas else None,
                "next_retry_at": ledger.next_due(campaign.id),
            }
            if show is not None:
                document["recipients"] = ledger.recipients_in(campaign.id, [show], limit)
            documents.append(document)
        if as_json:
            out.write(
                json.dumps({"ledger": ledger.url_text, "campaigns": documents}, indent=2) + "\n"
            )
            return 0
        if not documents:
            out.write(f"no campaigns in {ledger.url_text}\n")
            return 0
        for d in documents:
            counts = d["counts"]
            parts = ", ".join(f"{k} {counts[k]:,}" for k in ORDER if counts[k])
            out.write(
                f"{d['campaign']} [{d['status']}] {d['total']:,} recipients: {parts or 'none'}\n"
            )
            if d["rate_per_second"]:
                out.write(
                    f"  sending at {d['rate_per_second'] * 60:,.0f}/min, "
                    f"ETA {format_duration(d['eta_seconds'])}\n"
                )
            elif d["eta_seconds"] is not None:
                out.write(
                    f"  waiting on its pacing plan, ETA {format_duration(d['eta_seconds'])}\n"
                )
            for r in d.get("recipients", []):
                out.write(
                    f"  {r['email']}: {r['status']} after {r['attempts']} attempt(s): "
                    f"{r['last_reply'] or ''}\n"
                )
        return 0
    finally:
        ledger.dispose()

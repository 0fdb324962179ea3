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
            document: dict[str, Any] = {
                "campaign": campaign.name,
                "status": campaign.status,
                "total": total,
                "counts": counts,
                "rate_per_second": round(rate, 2),
                "eta_seconds": round(todo / rate) if rate > 0 else None,
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
            for r in d.get("recipients", []):
                out.write(
                    f"  {r['email']}: {r['status']} after {r['attempts']} attempt(s): "
                    f"{r['last_reply'] or ''}\n"
                )
        return 0
    finally:
        ledger.dispose()

"""What a hard bounce changes in the ledger: the recipient is *bounced*, its address is
suppressed, and the main server hears of it (an outbox event)."""

from __future__ import annotations

import sqlalchemy as sa

from mailpacer.ledger.schema import recipients
from mailpacer.ledger.states import RecipientState as R
from mailpacer.ledger.store import Ledger

__all__ = ["record_bounce"]

# A message the relay accepted can bounce later: sent, uncertain, or still *sending* (the
# bounce can beat the agent's outcome write, which then leaves the row bounced); so can one
# being retried (deferred, or pending again after an operator's resend). A claimed row is
# left alone (an agent is about to send it); bounced, failed or suppressed ones stay.
_BOUNCEABLE = [R.SENT.value, R.UNCERTAIN.value, R.DEFERRED.value, R.SENDING.value, R.PENDING.value]


def record_bounce(
    ledger: Ledger, recipient_id: int, reply: str, *, now: float, report: bool = False
) -> str | None:
    """Mark the recipient bounced and suppress its address; return the address (None if
    the ledger has no such recipient). ``report``: also queue an outbox event for the
    main server (when a reporter is configured)."""
    t = recipients.c
    with ledger.engine.begin() as conn:
        row = conn.execute(sa.select(t.email, t.campaign_id).where(t.id == recipient_id)).first()
        if row is None:
            return None
        changed = conn.execute(
            recipients.update()
            .where(t.id == recipient_id, t.status.in_(_BOUNCEABLE))
            .values(status=R.BOUNCED.value, last_reply=reply[:2000], updated_at=now)
        ).rowcount
    email, campaign_id = str(row.email), int(row.campaign_id)
    ledger.add_suppression(email, reason=reply[:500], source="dsn", now=now)
    if changed and report:
        ledger.add_events(
            [(campaign_id, recipient_id, "recipient.bounced", {"email": email, "reply": reply})],
            now=now,
        )
    return email

"""Recipient and campaign states, and which of them are final."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ACTIVE_STATES", "DUE_STATES", "TERMINAL_STATES", "CampaignState", "RecipientState"]


class RecipientState(StrEnum):
    PENDING = "pending"  # never tried, or released untouched
    CLAIMED = "claimed"  # leased by an agent, not yet on the wire
    SENDING = "sending"  # handed to an SMTP connection; outcome not yet recorded
    SENT = "sent"  # the relay said 2xx after the dot
    DEFERRED = "deferred"  # a transient failure; next_attempt_at says when to retry
    FAILED = "failed"  # a permanent failure (5xx, invalid, template error, too old)
    BOUNCED = "bounced"  # the address does not exist (5xx on RCPT or a DSN)
    SUPPRESSED = "suppressed"  # on a suppression list; never sent
    UNCERTAIN = "uncertain"  # connection lost after the dot: maybe delivered; never resent


class CampaignState(StrEnum):
    READY = "ready"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset(
    {
        RecipientState.SENT,
        RecipientState.FAILED,
        RecipientState.BOUNCED,
        RecipientState.SUPPRESSED,
        RecipientState.UNCERTAIN,
    }
)
DUE_STATES = (RecipientState.PENDING, RecipientState.DEFERRED)
ACTIVE_STATES = (RecipientState.CLAIMED, RecipientState.SENDING)

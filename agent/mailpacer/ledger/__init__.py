"""The durable per-recipient ledger, and its async face for the Trio agent."""

from mailpacer.ledger.lock import LedgerInUseError, LedgerLock
from mailpacer.ledger.states import CampaignState, RecipientState
from mailpacer.ledger.store import Campaign, Claimed, Ledger, LedgerError, Outcome, mask_url
from mailpacer.ledger.threaded import AsyncLedger, is_outage

__all__ = [
    "AsyncLedger",
    "Campaign",
    "CampaignState",
    "Claimed",
    "Ledger",
    "LedgerError",
    "LedgerInUseError",
    "LedgerLock",
    "Outcome",
    "RecipientState",
    "is_outage",
    "mask_url",
]

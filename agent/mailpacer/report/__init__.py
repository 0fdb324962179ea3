"""Progress reports to the customer's main server (issue 5).

``ReportScheduler`` decides when (15-s floor, speed tiers, backoff, circuit breaker) and
reads the durable events outbox (``LedgerOutbox``); ``ReportClient`` signs and POSTs with
httpx; ``ReceiverApp`` / ``ReceiverStore`` are the reference receiver.
"""

from mailpacer.report.client import Attempt, ReportClient
from mailpacer.report.config import ReportConfig, ReportConfigError
from mailpacer.report.outbox import Backlog, LedgerOutbox, Outbox, OutboxError
from mailpacer.report.protocol import OutboxEvent, sign, verify
from mailpacer.report.receiver import ReceiverApp, ReceiverStore, serve_receiver
from mailpacer.report.scheduler import Breaker, CampaignActivity, ReportScheduler

__all__ = [
    "Attempt",
    "Backlog",
    "Breaker",
    "CampaignActivity",
    "LedgerOutbox",
    "Outbox",
    "OutboxError",
    "OutboxEvent",
    "ReceiverApp",
    "ReceiverStore",
    "ReportClient",
    "ReportConfig",
    "ReportConfigError",
    "ReportScheduler",
    "serve_receiver",
    "sign",
    "verify",
]

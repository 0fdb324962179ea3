"""The agent's Prometheus metrics, in a registry of its own (one per agent, easy to test)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Named for Prometheus conventions: ``mailpacer_`` prefix, base units, ``_total``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter(
            "mailpacer_messages",
            "Recipients by outcome (sent, deferred, failed, bounced, uncertain, released).",
            ["campaign", "result"],
            registry=r,
        )
        self.transaction_seconds = Histogram(
            "mailpacer_smtp_transaction_seconds",
            "Time from writing MAIL FROM to the final reply, per message.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "mailpacer_messages_in_flight", "Messages handed to SMTP connections.", registry=r
        )
        self.send_rate = Gauge(
            "mailpacer_send_rate_messages_per_second",
            "Messages accepted by relays per second, over the last 10 seconds.",
            registry=r,
        )
        self.rate_limiter_wait = Counter(
            "mailpacer_rate_limiter_wait_seconds",
            "Time spent waiting for the campaign's rate limit.",
            registry=r,
        )
        self.connections = Gauge(
            "mailpacer_smtp_connections", "Open SMTP connections.", ["relay"], registry=r
        )
        self.connect_failures = Counter(
            "mailpacer_smtp_connect_failures",
            "Failed attempts to open an SMTP session.",
            ["relay"],
            registry=r,
        )
        self.campaign_remaining = Gauge(
            "mailpacer_campaign_remaining_recipients",
            "Recipients not yet in a final state.",
            ["campaign"],
            registry=r,
        )
        self.campaign_eta_seconds = Gauge(
            "mailpacer_campaign_eta_seconds",
            "Estimated seconds until the campaign is done (-1: unknown).",
            ["campaign"],
            registry=r,
        )

"""The agent's Prometheus metrics, in a registry of its own (one per agent, easy to test)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from mailpacer.hoststate import DiskState, HostState

__all__ = ["BREAKER_STATES", "DatabaseStatus", "Metrics", "RelayRegistry", "RelayStatus"]

BREAKER_STATES = ("closed", "half_open", "open")
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class CampaignProgress(Protocol):
    """What the backlog gauges need of engine.stats.CampaignStats (kept in memory)."""

    name: str
    counts: dict[str, int]


@dataclass
class RelayStatus:
    """One relay as the engine reports it: its circuit breaker and last connect outcome."""

    name: str  # RelayConfig.name: the password is masked
    breaker: str = "closed"
    since: float = field(default_factory=time.time)
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"breaker": self.breaker, "since": round(self.since, 3), "detail": self.detail}


class RelayRegistry:
    """Relays' states, reported by the engine, read by /readyz and /metrics (memory only).

    The engine calls :meth:`report` when a relay's breaker changes state (``closed``: in use,
    ``half_open``: probing after a failure, ``open``: not used until it cools down). Open
    connections and connect failures come from the ``mailpacer_smtp_*`` metrics.
    """

    def __init__(self) -> None:
        self._relays: dict[str, RelayStatus] = {}

    def register(self, name: str) -> RelayStatus:
        return self._relays.setdefault(name, RelayStatus(name))

    def report(self, name: str, breaker: str, detail: str | None = None) -> None:
        if breaker not in BREAKER_STATES:
            raise ValueError(f"breaker state {breaker!r}: expected one of {BREAKER_STATES}")
        status = self.register(name)
        if status.breaker != breaker:
            status.since = time.time()
        status.breaker = breaker
        status.detail = detail

    def __iter__(self) -> Iterator[RelayStatus]:
        return iter(list(self._relays.values()))

    def __len__(self) -> int:
        return len(self._relays)


@dataclass
class DatabaseStatus:
    """The last result of the background database probe (http.readiness.DatabaseProbe)."""

    url: str  # password masked
    up: bool = False
    checked: bool = False
    latency_seconds: float | None = None
    last_success: float | None = None  # time.time()
    error: str | None = "not checked yet"


class _StateCollector(Collector):
    """Gauges computed at scrape time from in-memory state: never touches the database."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # families vary with the state; auto_describe would call collect()

    def collect(self) -> Iterable[Metric]:
        m = self.m
        backlog = GaugeMetricFamily(
            "mailpacer_ledger_backlog_recipients",
            "Recipients of a running campaign not yet final, by state (from memory).",
            labels=["campaign", "state"],
        )
        for campaign in list(m.campaigns):
            for state in ("pending", "deferred", "active"):
                backlog.add_metric([campaign.name, state], campaign.counts.get(state, 0))
        yield backlog
        breaker = GaugeMetricFamily(
            "mailpacer_relay_breaker_state",
            "1 for the relay's current circuit-breaker state (closed, half_open, open).",
            labels=["relay", "state"],
        )
        for relay in m.relays:
            for state in BREAKER_STATES:
                breaker.add_metric([relay.name, state], 1.0 if relay.breaker == state else 0.0)
        yield breaker
        if m.database is not None:
            db = m.database
            yield GaugeMetricFamily(
                "mailpacer_database_up",
                "1 when the last background probe of the ledger database answered in time.",
                value=1.0 if db.up else 0.0,
            )
            if db.latency_seconds is not None:
                yield GaugeMetricFamily(
                    "mailpacer_database_probe_seconds",
                    "Latency of the last successful database probe (connect + SELECT 1).",
                    value=db.latency_seconds,
                )
            if db.last_success is not None:
                yield GaugeMetricFamily(
                    "mailpacer_database_last_success_timestamp_seconds",
                    "When the database last answered a probe (Unix time).",
                    value=db.last_success,
                )
        if m.ledger is not None:
            yield from _ledger_families(m.ledger)
        yield from _disk_families(m.disks)
        if m.host is not None:
            yield from _host_families(m.host)


def _ledger_families(ledger: Any) -> Iterator[Metric]:
    """The ledger's connection pool and how long calls waited for it (from memory)."""
    pool = GaugeMetricFamily(
        "mailpacer_db_pool_connections",
        "Connections of the ledger's pool: in use, idle, and the pool's size.",
        labels=["state"],
    )
    engine_pool = ledger.sync.engine.pool
    for state, read in (("in_use", "checkedout"), ("idle", "checkedin"), ("size", "size")):
        value = getattr(engine_pool, read, None)
        if callable(value):
            pool.add_metric([state], float(value()))
    yield pool
    wait = CounterMetricFamily(
        "mailpacer_db_wait_seconds",
        "Time ledger calls waited for a worker thread / pooled connection.",
    )
    wait.add_metric([], ledger.waited_seconds)
    yield wait
    calls = CounterMetricFamily("mailpacer_db_calls", "Ledger calls made by the agent.")
    calls.add_metric([], float(ledger.calls))
    yield calls
    yield GaugeMetricFamily(
        "mailpacer_db_outage",
        "1 while ledger calls are waiting out a database outage (sending is paused).",
        value=1.0 if ledger.in_outage else 0.0,
    )


def _disk_families(disks: dict[str, DiskState]) -> Iterator[Metric]:
    size = GaugeMetricFamily(
        "mailpacer_disk_size_bytes", "Size of the file system holding a path.", labels=["path"]
    )
    free = GaugeMetricFamily(
        "mailpacer_disk_free_bytes",
        "Free space for the agent on that file system.",
        labels=["path"],
    )
    for disk in disks.values():
        if disk.exists and disk.error is None:
            size.add_metric([disk.path], disk.total_bytes)
            free.add_metric([disk.path], disk.free_bytes)
    yield size
    yield free


def _host_families(host: HostState) -> Iterator[Metric]:
    cc = GaugeMetricFamily(
        "mailpacer_host_tcp_congestion_control_info",
        "The live net.ipv4.tcp_congestion_control (value 1).",
        labels=["algorithm"],
    )
    cc.add_metric([host.congestion_control or "unknown"], 1.0)
    yield cc
    nofile = GaugeMetricFamily(
        "mailpacer_host_nofile_limit",
        "The agent's RLIMIT_NOFILE (-1: unlimited).",
        labels=["limit"],
    )
    nofile.add_metric(["soft"], host.nofile_soft)
    nofile.add_metric(["hard"], host.nofile_hard)
    yield nofile
    tmpfs_size = GaugeMetricFamily(
        "mailpacer_host_scratch_size_bytes",
        "Size of the scratch (tmpfs) mount; absent when the path does not exist.",
        labels=["path", "fstype"],
    )
    tmpfs_used = GaugeMetricFamily(
        "mailpacer_host_scratch_used_bytes",
        "Used bytes of the scratch (tmpfs) mount.",
        labels=["path", "fstype"],
    )
    scratch = host.scratch
    if scratch is not None and scratch.exists and scratch.error is None:
        labels = [scratch.path, scratch.fstype or "unknown"]
        tmpfs_size.add_metric(labels, scratch.total_bytes)
        tmpfs_used.add_metric(labels, scratch.used_bytes)
    yield tmpfs_size
    yield tmpfs_used
    yield GaugeMetricFamily(
        "mailpacer_host_tuning_file_present",
        "1 when the tuner's summary (tuning.json) exists and was read.",
        value=1.0 if host.tuning_present and host.tuning_error is None else 0.0,
    )
    keys = GaugeMetricFamily(
        "mailpacer_host_tuning_sysctl_keys",
        "Sysctl keys in tuning.json by status (applied, skipped, unsupported, not_applicable).",
        labels=["status"],
    )
    for status, count in sorted(host.tuning_counts.items()):
        keys.add_metric([status], count)
    yield keys
    yield GaugeMetricFamily(
        "mailpacer_host_tuning_sysctl_drift_keys",
        "Applied sysctl keys whose live value differs from tuning.json.",
        value=len(host.drifted),
    )
    if host.tuning_profile:
        profile = GaugeMetricFamily(
            "mailpacer_host_tuning_profile_info",
            "The tuner's sizing profile (value 1).",
            labels=["profile"],
        )
        profile.add_metric([host.tuning_profile], 1.0)
        yield profile


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
        self.replies = Counter(
            "mailpacer_smtp_replies",
            "Recipients' final SMTP replies by relay and reply class (2xx, 4xx, 5xx; 'none' "
            "when the connection was lost before an answer).",
            ["campaign", "relay", "reply_class"],
            registry=r,
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
        self.event_loop_lag = Histogram(
            "mailpacer_event_loop_lag_seconds",
            "How late the event loop woke a sleeping task (sampled every 0.5 s).",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.reporter_backlog = Gauge(
            "mailpacer_reporter_backlog_events",
            "Events waiting to be reported to the main server.",
            registry=r,
        )
        self.reporter_last_success = Gauge(
            "mailpacer_reporter_last_success_timestamp_seconds",
            "When the reporter last delivered events to the main server (Unix time; 0: never).",
            registry=r,
        )
        self.reporter_breaker = Gauge(
            "mailpacer_reporter_breaker_state",
            "1 for the reporter's current circuit-breaker state (closed, half-open, open).",
            ["state"],
            registry=r,
        )
        self.guard_tripped = Gauge(
            "mailpacer_campaign_guard_tripped",
            '1 when a safety guard stopped the campaign (e.g. guard="consecutive_failures").',
            ["campaign", "guard"],
            registry=r,
        )
        # In-memory state read at scrape time (_StateCollector); set by the engine and monitors.
        self.relays = RelayRegistry()
        self.campaigns: list[CampaignProgress] = []
        self.database: DatabaseStatus | None = None
        self.ledger: Any = None  # the AsyncLedger, for pool and wait figures
        self.disks: dict[str, DiskState] = {}
        self.host: HostState | None = None
        r.register(_StateCollector(self))

    def watch_reporter(self, reporter: Any) -> None:
        """The progress reporter's backlog, last success and breaker, read at scrape time
        (``reporter``: a ``report.scheduler.ReportScheduler``)."""
        self.reporter_backlog.set_function(lambda: reporter.backlog.events)
        self.reporter_last_success.set_function(lambda: reporter.last_success_wall or 0.0)

        def is_in(state: str) -> Callable[[], float]:
            return lambda: 1.0 if reporter.breaker.value == state else 0.0

        for state in ("closed", "half-open", "open"):
            self.reporter_breaker.labels(state).set_function(is_in(state))

    def watch_campaign(self, stats: CampaignProgress) -> None:
        """Export the ledger backlog of a running campaign from its in-memory counts."""
        if stats not in self.campaigns:
            self.campaigns.append(stats)

    def forget_campaign(self, stats: CampaignProgress) -> None:
        """A campaign this agent no longer sends (its series stop being exported)."""
        self.campaigns = [s for s in self.campaigns if s is not stats]

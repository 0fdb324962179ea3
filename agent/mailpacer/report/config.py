"""The reporter's settings: one frozen, validated value (defaults are the issue's rules)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

__all__ = ["ReportConfig", "ReportConfigError"]

Detail = Literal["failures", "all"]

_SOURCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")


class ReportConfigError(ValueError):
    """A setting with a bad value; the message names the key (``report.<key>``)."""


@dataclass(frozen=True, slots=True)
class ReportConfig:
    """Where and how the agent reports progress to the customer's main server.

    ``speed_tiers`` maps an upper bound in messages per minute to the interval used for
    campaigns up to that speed; faster than the last bound uses ``fastest_interval``.
    """

    url: str
    secret: bytes = field(repr=False)
    source: str = "mailpacer"  # names this outbox's sequence space at the receiver
    min_interval: float = 15.0
    speed_tiers: tuple[tuple[float, float], ...] = ((20, 120.0), (60, 90.0), (120, 45.0))
    fastest_interval: float = 30.0
    max_in_flight: int = 2
    batch_size: int = 100
    detail: Detail = "failures"
    backoff_base: float = 1.0
    backoff_cap: float = 600.0
    breaker_threshold: int = 5
    breaker_open_seconds: float = 60.0
    backlog_poll: float = 5.0  # how often the outbox's backlog is counted (a cheap query)
    backlog_warning: int = 100_000  # health warning above this many undelivered events
    scan_limit: int = 10_000  # outbox rows covered per request at detail = "failures"
    gzip_min_bytes: int = 1024
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    write_timeout: float = 10.0
    request_deadline: float = 30.0  # whole request, so a 1-byte-per-second answer ends
    max_response_bytes: int = 65_536
    verify_tls: bool | str = True  # False, True, or a CA bundle path

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ReportConfigError:
            value = "***" if key == "secret" else repr(getattr(self, key))
            return ReportConfigError(f"report.{key} = {value}: {why}")

        if not self.url.startswith(("http://", "https://")):
            raise bad("url", "expected an http:// or https:// URL")
        if len(self.secret) < 16:
            raise bad("secret", "must be at least 16 bytes")
        if not _SOURCE.match(self.source):
            raise bad("source", "1-100 characters of letters, digits, '.', '_', ':', '-'")
        if self.detail not in ("failures", "all"):
            raise bad("detail", "expected 'failures' or 'all'")
        for key in ("min_interval", "fastest_interval", "backoff_base", "breaker_open_seconds"):
            if not getattr(self, key) > 0:
                raise bad(key, "must be > 0")
        if self.backoff_cap < self.backoff_base:
            raise bad("backoff_cap", "must be >= report.backoff_base")
        for key in ("max_in_flight", "batch_size", "breaker_threshold", "scan_limit"):
            if not getattr(self, key) >= 1:
                raise bad(key, "must be >= 1")
        if self.scan_limit < self.batch_size:
            raise bad("scan_limit", "must be >= report.batch_size")
        bounds = [b for b, _ in self.speed_tiers]
        if bounds != sorted(bounds) or any(i <= 0 for _, i in self.speed_tiers):
            raise bad("speed_tiers", "bounds must ascend and intervals be > 0")

    @property
    def event_states(self) -> frozenset[str]:
        """Which recipient outcomes go to the outbox: every non-success one, and with
        ``detail = "all"`` the sent ones too."""
        states = {"deferred", "failed", "bounced", "uncertain", "suppressed"}
        if self.detail == "all":
            states.add("sent")
        return frozenset(states)

    def interval_for(self, per_minute: float) -> float:
        """The update interval for the fastest active campaign's speed (never below the floor)."""
        for bound, interval in self.speed_tiers:
            if per_minute <= bound:
                return max(interval, self.min_interval)
        return max(self.fastest_interval, self.min_interval)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ReportConfig:
        """From a ``[report]`` TOML table: unknown keys and wrong types name the key."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise ReportConfigError(f"report.{key}: unknown setting")
            if key == "secret":
                value = value.encode() if isinstance(value, str) else value
            elif key == "speed_tiers":
                try:
                    value = tuple((float(b), float(i)) for b, i in value)
                except (TypeError, ValueError):
                    raise ReportConfigError(
                        "report.speed_tiers: expected a list of [max_per_minute, seconds]"
                    ) from None
            kwargs[key] = value
        for key in ("url", "secret"):
            if key not in kwargs:
                raise ReportConfigError(f"report.{key}: required")
        return cls(**kwargs)

"""Parsing and validation of what operators type: rates, relay URLs, durations, database URLs.

Every parser raises :class:`ConfigError` with a message naming the bad value and what
would be accepted, so the CLI can print it without a traceback.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "ConfigError",
    "Rate",
    "RelayConfig",
    "parse_bool",
    "parse_duration",
    "parse_rate",
    "parse_relay_url",
    "parse_share",
]


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and why."""


_RATE_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}


@dataclass(frozen=True, slots=True)
class Rate:
    """A number of messages per period, e.g. ``300/min``."""

    count: float
    period: float  # seconds
    text: str

    @property
    def per_second(self) -> float:
        return self.count / self.period

    @property
    def interval(self) -> float:
        """Seconds between two messages at this rate."""
        return self.period / self.count

    def __str__(self) -> str:
        return self.text


def parse_rate(text: str) -> Rate:
    """Parse ``N/unit`` (unit: s, min, h, day; also ``N/5min``)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*([0-9]*)\s*([a-z]+)\s*", text.lower())
    if not match:
        raise ConfigError(
            f"invalid rate {text!r}: expected a positive number per unit, "
            "e.g. 600/min, 10/s, 5000/h, 20000/day"
        )
    count = float(match.group(1))
    multiplier = int(match.group(2)) if match.group(2) else 1
    unit = match.group(3)
    if unit not in _RATE_UNITS and len(unit) > 3 and unit.endswith("s"):
        unit = unit[:-1]  # plurals of the long forms: mins, hours, days, secs
    if unit not in _RATE_UNITS:
        raise ConfigError(
            f"invalid rate {text!r}: unknown unit {match.group(3)!r} (use s, min, h or day)"
        )
    if count <= 0 or multiplier <= 0 or not math.isfinite(count):
        raise ConfigError(f"invalid rate {text!r}: the rate must be greater than zero")
    return Rate(count, _RATE_UNITS[unit] * multiplier, text.strip())


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|min|s|m|h|d)?")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Parse ``90``, ``30s``, ``5m``, ``1h30m``, ``2d`` into seconds."""
    value = text.strip().lower()
    pos = 0
    total = 0.0
    for match in _DURATION.finditer(value):
        if match.start() != pos or not match.group(0):
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
        pos = match.end()
    if not value or pos != len(value):
        raise ConfigError(f"invalid duration {text!r}: expected e.g. 30s, 5m, 1h30m, 2d")
    return total


def parse_share(text: str, what: str) -> float:
    """``5%`` or ``0.05`` -> 0.05 (``0`` turns a guard off)."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise ConfigError(f"{what} {text!r}: expected a share such as 5% or 0.05 (0 = off)")
    return value


def parse_bool(text: str, what: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"invalid {what} {text!r}: expected true or false")


_SCHEMES = {
    "smtp": ("plain", 25),
    "smtps": ("implicit", 465),
    "smtp+starttls": ("starttls", 587),
    "submission": ("starttls", 587),
}


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Where and how to reach one outbound relay. The password never appears in repr/str."""

    url: str
    host: str
    port: int
    tls: str  # "plain" | "starttls" | "implicit"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    verify: bool = True
    cafile: str | None = None
    allow_plain_auth: bool = False
    helo: str | None = None
    max_messages_per_connection: int = 0  # 0 = unlimited
    priority: int = 0  # failover order: lower first; a tier is used while any of it works
    weight: int = 1  # share of new connections within its priority tier

    @property
    def name(self) -> str:
        """The URL with any password masked: safe for logs, metrics and errors."""
        user = f"{self.username}:***@" if self.username else ""
        scheme = {"plain": "smtp", "starttls": "smtp+starttls", "implicit": "smtps"}[self.tls]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{user}{host}:{self.port}"

    def __str__(self) -> str:
        return self.name


def parse_relay_url(url: str) -> RelayConfig:
    """Parse ``smtp://host:port``, ``smtps://user:pass@host``, ``smtp+starttls://...?verify=false``.

    Query options: ``verify`` (certificate verification, default true), ``cafile``,
    ``allow_plain_auth`` (AUTH without TLS), ``helo`` (our EHLO name), ``max_per_connection``,
    ``priority`` (failover order, lower first) and ``weight`` (sharing within a priority).
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        # "Port could not be cast to integer value as 'xx'" may quote part of a password
        detail = str(exc)
        if "cast to integer" in detail:
            detail = (
                "the port is not a number (a password containing '/', ':' or '@' "
                "must be percent-encoded)"
            )
        raise ConfigError(f"invalid relay URL {_mask(url)!r}: {detail}") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigError(
            f"invalid relay URL {_mask(url)!r}: scheme must be one of "
            "smtp://, smtps://, smtp+starttls://"
        )
    if not parts.hostname:
        raise ConfigError(f"invalid relay URL {_mask(url)!r}: no host (e.g. smtp://127.0.0.1:25)")
    tls, default_port = _SCHEMES[scheme]
    options = {k.lower(): v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    known = {
        "verify",
        "cafile",
        "allow_plain_auth",
        "helo",
        "max_per_connection",
        "priority",
        "weight",
    }
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"invalid relay URL {_mask(url)!r}: unknown option(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
    if port == 0:
        raise ConfigError(f"invalid relay URL {_mask(url)!r}: port 0 is not a usable port")
    helo = options.get("helo") or None
    if helo is not None and not _HELO.fullmatch(helo):
        raise ConfigError(
            f"invalid relay URL {_mask(url)!r}: helo {helo[:80]!r} must be a host name "
            "or an address literal such as [192.0.2.1]"
        )
    max_per_connection = 0
    if "max_per_connection" in options:
        try:
            max_per_connection = int(options["max_per_connection"])
        except ValueError:
            max_per_connection = -1
        if max_per_connection < 0:
            raise ConfigError(
                f"invalid relay URL {_mask(url)!r}: max_per_connection must be an integer >= 0"
            )
    priority = _int_option(url, options, "priority", default=0, low=0, high=1000)
    weight = _int_option(url, options, "weight", default=1, low=1, high=1000)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is not None and not username:
        raise ConfigError(f"invalid relay URL {_mask(url)!r}: a password needs a user name")
    return RelayConfig(
        url=_mask(url),
        host=parts.hostname,
        port=port or default_port,
        tls=tls,
        username=username,
        password=password,
        verify=parse_bool(options.get("verify", "true"), "verify option"),
        cafile=options.get("cafile") or None,
        allow_plain_auth=parse_bool(
            options.get("allow_plain_auth", "false"), "allow_plain_auth option"
        ),
        helo=helo,
        max_messages_per_connection=max_per_connection,
        priority=priority,
        weight=weight,
    )


def _int_option(
    url: str, options: dict[str, str], name: str, *, default: int, low: int, high: int
) -> int:
    if name not in options:
        return default
    text = options[name].strip()
    if not text.isdigit() or not low <= int(text) <= high:
        raise ConfigError(
            f"invalid relay URL {_mask(url)!r}: {name} must be an integer from {low} to {high}"
        )
    return int(text)


def _mask(url: str) -> str:
    """Hide a password in a URL so that error messages never leak it."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


# An EHLO argument: a domain or an address literal; nothing that could end the command.
_HELO = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253})|\[[0-9A-Za-z.:-]{1,60}\]")

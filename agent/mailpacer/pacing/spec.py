"""The pacing plan as configuration: frozen specs parsed from a plain dict (TOML, JSON).

Every error is a :class:`~mailpacer.config.ConfigError` that names the key and the bad value,
raised at load time, before anything is sent. The format (see docs/pacing.md)::

    timezone = "Europe/Berlin"
    [global]                     # the whole agent
    rate = "3000/min"
    [campaign]                   # defaults for each campaign (campaign settings override)
    rate = "300/min"
    burst = 5
    per_day = 50000
    windows = [{days = "mon-fri", hours = ["09:00-12:00", "13:00-17:30"]}]
    ramp = {start = 500, growth = "50%", max = 50000, since = "2024-05-06"}
    [relays.ses]                 # "*" = every relay not named
    rate = "14/s"
    max_connections = 10
    aimd = {decrease = 0.5, increase = 0.01}
    [groups.gmail]               # a destination domain group; "*" = every other group
    rate = "20/s"
    max_in_flight = 50
    [domain_groups.acme]         # add a group, or domains / MX suffixes to a built-in one
    domains = ["acme.example"]
    mx = ["mx.acme-mail.net"]
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailpacer.config import ConfigError, Rate, parse_duration, parse_rate
from mailpacer.pacing.calendar import DAY_NAMES, Ramp, WindowRule
from mailpacer.pacing.feedback import AimdSpec
from mailpacer.pacing.groups import DomainGroups, GroupRule

__all__ = [
    "LimitSpec",
    "PacingConfig",
    "parse_limit",
    "parse_pacing",
    "parse_timezone",
    "parse_windows",
]

UTC = ZoneInfo("UTC")


@dataclass(frozen=True)
class LimitSpec:
    """One level of the hierarchy (the agent, a relay, a domain group or a campaign)."""

    rate: Rate | None = None
    burst: int = 1
    per_hour: int | None = None
    per_day: int | None = None
    windows: tuple[WindowRule, ...] = ()
    ramp: Ramp | None = None
    timezone: ZoneInfo = UTC
    aimd: AimdSpec | None = None
    max_connections: int | None = None
    max_messages_per_connection: int | None = None
    max_in_flight: int | None = None

    @property
    def paces(self) -> bool:
        """Whether this level limits the pace at all (not only concurrency)."""
        return bool(
            self.rate or self.per_hour or self.per_day or self.windows or self.ramp or self.aimd
        )


@dataclass(frozen=True)
class PacingConfig:
    timezone: ZoneInfo = UTC
    global_limit: LimitSpec | None = None
    campaign: LimitSpec | None = None
    relays: Mapping[str, LimitSpec] = field(default_factory=dict)
    groups: Mapping[str, LimitSpec] = field(default_factory=dict)
    domain_groups: DomainGroups = field(default_factory=DomainGroups)

    def relay_spec(self, name: str) -> LimitSpec | None:
        return self.relays.get(name, self.relays.get("*"))

    def group_spec(self, name: str) -> LimitSpec | None:
        return self.groups.get(name, self.groups.get("*"))


# -- helpers -----------------------------------------------------------------------------


def _table(value: object, path: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a table of settings, not {value!r}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: keys must be strings, not {key!r}")
    return value


def _check_keys(table: Mapping[str, object], allowed: tuple[str, ...], path: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(
                f"{path}.{key}: unknown setting (expected one of: {', '.join(allowed)})"
            )


def _positive_int(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{path}: expected a positive whole number, not {value!r}")
    try:
        number = int(str(value).replace("_", "").strip())
    except ValueError:
        raise ConfigError(f"{path}: expected a positive whole number, not {value!r}") from None
    if number < 1:
        raise ConfigError(f"{path}: must be at least 1, not {value!r}")
    return number


def _duration(value: object, path: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected a duration such as 30s or 5m, not {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    else:
        raise ConfigError(f"{path}: expected a duration such as 30s or 5m, not {value!r}")
    if seconds < 0 or not math.isfinite(seconds):
        raise ConfigError(f"{path}: must not be negative, not {value!r}")
    return seconds


def _fraction(value: object, path: str, *, above_one: bool = False) -> float:
    """``0.5``, ``"50%"``: a share; above 1 only where a growth may exceed 100 %."""
    number: float
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected a share such as 0.5 or 50%, not {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[0-9]+(?:\.[0-9]+)?\s*%\s*", value):
        number = float(value.strip().rstrip("%")) / 100.0
    else:
        raise ConfigError(f"{path}: expected a share such as 0.5 or 50%, not {value!r}")
    if not math.isfinite(number) or number <= 0 or (number > 1 and not above_one):
        upper = "" if above_one else " and at most 1 (100%)"
        raise ConfigError(f"{path}: must be above 0{upper}, not {value!r}")
    return number


def parse_timezone(value: object, path: str = "timezone") -> ZoneInfo:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: expected a time zone name such as Europe/Berlin")
    try:
        return ZoneInfo(value.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{path}: unknown time zone {value!r} (use an IANA name such as Europe/Berlin)"
        ) from None


# -- windows -----------------------------------------------------------------------------

_DAY_ALIASES = {
    "daily": range(7),
    "*": range(7),
    "all": range(7),
    "weekdays": range(5),
    "weekends": range(5, 7),
}


def _day(name: str, path: str) -> int:
    key = name.strip().lower()[:3]
    if len(name.strip()) < 3 or key not in DAY_NAMES:
        raise ConfigError(f"{path}: unknown day {name!r} (use mon, tue, wed, thu, fri, sat, sun)")
    return DAY_NAMES.index(key)


def _days(value: object, path: str) -> frozenset[int]:
    parts: list[str]
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,\s]+", value) if p]
    elif isinstance(value, list) and all(isinstance(p, str) for p in value):
        parts = [str(p) for p in value]
    else:
        raise ConfigError(f'{path}: expected days such as "mon-fri" or ["sat", "sun"]')
    days: set[int] = set()
    for part in parts:
        alias = _DAY_ALIASES.get(part.strip().lower())
        if alias is not None:
            days.update(alias)
            continue
        first, dash, last = part.partition("-")
        if dash:
            start, end = _day(first, path), _day(last, path)
            day = start
            days.add(day)
            while day != end:  # "fri-mon" wraps over the weekend
                day = (day + 1) % 7
                days.add(day)
        else:
            days.add(_day(part, path))
    if not days:
        raise ConfigError(f"{path}: no days given")
    return frozenset(days)


_CLOCK = re.compile(r"\s*([0-9]{1,2})(?::([0-9]{2}))?\s*")


def _minutes(text: str, path: str, whole: str) -> int:
    match = _CLOCK.fullmatch(text)
    if not match:
        raise ConfigError(f"{path}: invalid hours {whole!r}: expected e.g. 09:00-17:30")
    hour, minute = int(match.group(1)), int(match.group(2) or 0)
    if minute > 59 or hour > 24 or (hour == 24 and minute):
        raise ConfigError(f"{path}: invalid time {text.strip()!r} in {whole!r}")
    return hour * 60 + minute


def _hours(value: object, path: str) -> list[tuple[int, int, str]]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise ConfigError(f'{path}: expected hours such as "09:00-17:00" or a list of them')
    spans: list[tuple[int, int, str]] = []
    for item in items:
        text = str(item)
        first, dash, last = text.partition("-")
        if not dash:
            raise ConfigError(f"{path}: invalid hours {text!r}: expected e.g. 09:00-17:30")
        start, end = _minutes(first, path, text), _minutes(last, path, text)
        if start == 1440:
            raise ConfigError(f"{path}: invalid hours {text!r}: a window cannot start at 24:00")
        if start == end:
            raise ConfigError(
                f"{path}: invalid hours {text!r}: empty window (use 00:00-24:00 for all day)"
            )
        spans.append((start, end if end > start or end != 0 else 1440, text.strip()))
    return spans


def _week_overlap(a: WindowRule, b: WindowRule) -> bool:
    week = 7 * 1440
    for (s1, e1), (s2, e2) in itertools.product(a.weekly_spans(), b.weekly_spans()):
        for shift in (-week, 0, week):
            if s1 < e2 + shift and s2 + shift < e1:
                return True
    return False


def parse_windows(value: object, path: str = "windows") -> tuple[WindowRule, ...]:
    """``{days = "mon-fri", hours = "09:00-17:00"}`` or a list of such tables."""
    tables = value if isinstance(value, list) else [value]
    if not tables:
        raise ConfigError(f"{path}: an empty list of windows would never send")
    rules: list[WindowRule] = []
    for index, raw in enumerate(tables):
        where = f"{path}[{index}]" if isinstance(value, list) else path
        table = _table(raw, where)
        _check_keys(table, ("days", "hours"), where)
        days = _days(table.get("days", "daily"), f"{where}.days")
        if "hours" not in table:
            raise ConfigError(f'{where}.hours: missing (e.g. "09:00-17:00")')
        for start, end, text in _hours(table["hours"], f"{where}.hours"):
            day_text = table.get("days", "daily")
            rules.append(WindowRule(days, start, end, f"{day_text} {text}"))
    for a, b in itertools.combinations(rules, 2):
        if _week_overlap(a, b):
            raise ConfigError(f"{path}: windows {a.text!r} and {b.text!r} overlap")
    return tuple(rules)


# -- ramp, aimd, limit -----------------------------------------------------------------------


def _ramp(value: object, path: str) -> Ramp:
    table = _table(value, path)
    _check_keys(table, ("start", "growth", "max", "since"), path)
    if "start" not in table:
        raise ConfigError(f"{path}.start: missing (messages on the first day, e.g. 500)")
    start = _positive_int(table["start"], f"{path}.start")
    growth = _fraction(table.get("growth", "50%"), f"{path}.growth", above_one=True)
    maximum = _positive_int(table["max"], f"{path}.max") if "max" in table else None
    if maximum is not None and maximum < start:
        raise ConfigError(f"{path}.max: {maximum} is below the ramp's start ({start})")
    since: date | None = None
    if "since" in table:
        raw = table["since"]
        if isinstance(raw, date):
            since = raw
        elif isinstance(raw, str):
            try:
                since = date.fromisoformat(raw.strip())
            except ValueError:
                raise ConfigError(
                    f"{path}.since: invalid date {raw!r} (expected YYYY-MM-DD)"
                ) from None
        else:
            raise ConfigError(f"{path}.since: expected a date YYYY-MM-DD, not {raw!r}")
    return Ramp(start, growth, maximum, since)


def _aimd(value: object, path: str) -> AimdSpec | None:
    if value is False:
        return None
    if value is True:
        return AimdSpec()
    table = _table(value, path)
    _check_keys(table, ("decrease", "increase", "floor", "holdoff", "max_pause", "pause"), path)
    kwargs: dict[str, float] = {}
    for key in ("decrease", "increase", "floor"):
        if key in table:
            kwargs[key] = _fraction(table[key], f"{path}.{key}")
    if kwargs.get("decrease") == 1.0:
        raise ConfigError(f"{path}.decrease: must be below 1 (1 would never slow down)")
    for key in ("holdoff", "max_pause", "pause"):
        if key in table:
            kwargs[key] = _duration(table[key], f"{path}.{key}")
    return AimdSpec(**kwargs)


_LIMIT_KEYS = (
    "rate",
    "burst",
    "per_hour",
    "per_day",
    "windows",
    "window",
    "ramp",
    "timezone",
    "aimd",
    "max_connections",
    "max_messages_per_connection",
    "max_in_flight",
)


def parse_limit(value: object, path: str = "limit", *, timezone: ZoneInfo = UTC) -> LimitSpec:
    """One level of the hierarchy from a table; ``timezone`` is the default zone."""
    table = _table(value, path)
    _check_keys(table, _LIMIT_KEYS, path)
    rate: Rate | None = None
    if "rate" in table:
        raw = table["rate"]
        if not isinstance(raw, str):
            raise ConfigError(f'{path}.rate: expected a rate such as "300/min", not {raw!r}')
        try:
            rate = parse_rate(raw)
        except ConfigError as exc:
            raise ConfigError(f"{path}.rate: {exc}") from None
    burst = _positive_int(table["burst"], f"{path}.burst") if "burst" in table else 1
    if burst > 1 and rate is None:
        raise ConfigError(f"{path}.burst: a burst needs a rate")
    zone = timezone
    if "timezone" in table:
        zone = parse_timezone(table["timezone"], f"{path}.timezone")
    if "window" in table and "windows" in table:
        raise ConfigError(f"{path}: give either window or windows, not both")
    windows: tuple[WindowRule, ...] = ()
    for key in ("window", "windows"):
        if key in table:
            windows = parse_windows(table[key], f"{path}.{key}")
    aimd = _aimd(table["aimd"], f"{path}.aimd") if "aimd" in table else None
    if aimd is not None and rate is None:
        raise ConfigError(f"{path}.aimd: AIMD adjusts a rate: set {path}.rate too")

    def optional_int(key: str) -> int | None:
        return _positive_int(table[key], f"{path}.{key}") if key in table else None

    return LimitSpec(
        rate=rate,
        burst=burst,
        per_hour=optional_int("per_hour"),
        per_day=optional_int("per_day"),
        windows=windows,
        ramp=_ramp(table["ramp"], f"{path}.ramp") if "ramp" in table else None,
        timezone=zone,
        aimd=aimd,
        max_connections=optional_int("max_connections"),
        max_messages_per_connection=optional_int("max_messages_per_connection"),
        max_in_flight=optional_int("max_in_flight"),
    )


def _named_limits(value: object, path: str, zone: ZoneInfo) -> dict[str, LimitSpec]:
    table = _table(value, path)
    return {
        name: parse_limit(spec, f"{path}.{name}", timezone=zone) for name, spec in table.items()
    }


def _domain_list(value: object, path: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
        raise ConfigError(f"{path}: expected a list of names, not {value!r}")
    for item in items:
        text = str(item).strip()
        core = text.removeprefix("*.").removesuffix(".*")
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.?", core):
            raise ConfigError(f"{path}: invalid domain or host {text!r}")
    return tuple(str(i).strip() for i in items)


def parse_pacing(value: object, path: str = "pacing") -> PacingConfig:
    """The whole hierarchy from a plain dict (``[pacing]`` of the agent's TOML)."""
    table = _table(value, path)
    _check_keys(
        table,
        (
            "timezone",
            "global",
            "campaign",
            "relays",
            "groups",
            "domain_groups",
            "builtin_domain_groups",
        ),
        path,
    )
    zone = parse_timezone(table["timezone"], f"{path}.timezone") if "timezone" in table else UTC
    builtin = table.get("builtin_domain_groups", True)
    if not isinstance(builtin, bool):
        raise ConfigError(f"{path}.builtin_domain_groups: expected true or false")
    rules: dict[str, GroupRule] = {}
    for name, raw in _table(table.get("domain_groups", {}), f"{path}.domain_groups").items():
        where = f"{path}.domain_groups.{name}"
        group = _table(raw, where)
        _check_keys(group, ("domains", "mx"), where)
        if not group:
            raise ConfigError(f"{where}: give domains, mx or both")
        rules[name] = GroupRule(
            name,
            _domain_list(group.get("domains", []), f"{where}.domains"),
            _domain_list(group.get("mx", []), f"{where}.mx"),
        )
    return PacingConfig(
        timezone=zone,
        global_limit=parse_limit(table["global"], f"{path}.global", timezone=zone)
        if "global" in table
        else None,
        campaign=parse_limit(table["campaign"], f"{path}.campaign", timezone=zone)
        if "campaign" in table
        else None,
        relays=_named_limits(table.get("relays", {}), f"{path}.relays", zone),
        groups=_named_limits(table.get("groups", {}), f"{path}.groups", zone),
        domain_groups=DomainGroups.from_mapping(rules, builtin=builtin),
    )

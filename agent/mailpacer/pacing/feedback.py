"""What relays and mailbox providers say about our pace, and how a limit reacts (AIMD).

``classify_reply`` reads one SMTP reply: is it a throttle ("slow down"), and does it carry a
hint ("try again in 30 seconds")? ``Aimd`` turns those signals into a rate factor: each
throttle multiplies it by ``decrease`` (at most once per ``holdoff``), each success adds
``increase`` back, between ``floor`` and 1 (the configured rate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "THROTTLE_CODES",
    "Aimd",
    "AimdSpec",
    "ReplySignal",
    "classify_reply",
    "parse_retry_hint",
]

# Transient replies that mean "you are too fast" (RFC 5321 / 3463 and provider practice:
# 421 service busy, 450/451 try later, 452 too many recipients, 454 SES Throttling).
THROTTLE_CODES = frozenset({421, 450, 451, 452, 454})

_THROTTLE_TEXT = re.compile(
    r"too\s+many|too\s+fast|too\s+much\s+mail|rate[\s-]?limit|ratelimit|throttl|"
    r"try\s+again\s+later|slow\s+down|unusual\s+rate|temporarily\s+deferred|"
    r"exceeded|server\s+busy|receiving\s+mail\s+at\s+a\s+rate",
    re.IGNORECASE,
)

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}

_HINT = re.compile(
    r"(?:try(?:\s+it)?\s+again|retry(?:[\s-]after)?|resend|come\s+back|wait)"
    r"(?:\s*:)?(?:\s+(?:in|after|for))?(?:\s+(?:about|approximately|at\s+least))?"
    r"\s+(\d+(?:\.\d+)?)\s*([a-z]+)?\b",
    re.IGNORECASE,
)


def parse_retry_hint(text: str) -> float | None:
    """Seconds the server asks us to wait ("try again in 30 seconds", "retry after 2
    minutes", "Retry-After: 120"), or None when the text names no time."""
    for match in _HINT.finditer(text):
        unit = (match.group(2) or "s").lower()
        if unit not in _UNITS:
            continue  # "retry 3 times", "wait 5 messages": not a time
        value = float(match.group(1)) * _UNITS[unit]
        if value > 0:
            return value
    return None


@dataclass(frozen=True, slots=True)
class ReplySignal:
    """What one reply means for pacing."""

    throttle: bool = False
    retry_after: float | None = None  # seconds, from a hint in the text
    success: bool = False  # a 2xx: the pace was fine


_SUCCESS = ReplySignal(success=True)


def classify_reply(code: int | None, text: str = "") -> ReplySignal:
    """A throttle: 421/450/451/452/454, or any 4xx whose text says "too many", "rate limit",
    "try again later", "slow down", ... A 2xx is a success; a 5xx or a lost connection says
    nothing about the pace (neither a throttle nor a success)."""
    if code is None:
        return ReplySignal()
    if 200 <= code < 300:
        return _SUCCESS
    if 400 <= code < 500:
        throttle = code in THROTTLE_CODES or bool(_THROTTLE_TEXT.search(text))
        hint = parse_retry_hint(text) if throttle else None
        return ReplySignal(throttle=throttle, retry_after=hint)
    return ReplySignal(throttle=False)


@dataclass(frozen=True, slots=True)
class AimdSpec:
    """Additive increase, multiplicative decrease of a limit's rate."""

    decrease: float = 0.5  # factor applied on a throttle
    increase: float = 0.01  # share of the configured rate regained per success
    floor: float = 0.05  # the rate never falls below this share of the configured rate
    holdoff: float = 10.0  # seconds: one cut per burst of throttles; no increase right after
    max_pause: float = 3600.0  # a hint longer than this pauses only this long
    pause: float = 0.0  # pause after a throttle without a hint (seconds)

    def __post_init__(self) -> None:
        if not 0 < self.decrease < 1:
            raise ValueError(f"aimd decrease {self.decrease!r}: must be between 0 and 1")
        if not 0 < self.increase <= 1:
            raise ValueError(f"aimd increase {self.increase!r}: must be above 0 and at most 1")
        if not 0 < self.floor <= 1:
            raise ValueError(f"aimd floor {self.floor!r}: must be above 0 and at most 1")
        for name in ("holdoff", "max_pause", "pause"):
            if getattr(self, name) < 0:
                raise ValueError(f"aimd {name} must not be negative")


class Aimd:
    """The current share (``factor``, floor..1) of a limit's configured rate."""

    __slots__ = ("_last_cut", "cuts", "factor", "spec")

    def __init__(self, spec: AimdSpec) -> None:
        self.spec = spec
        self.factor = 1.0
        self.cuts = 0
        self._last_cut = float("-inf")

    def throttled(self, now: float) -> bool:
        """A throttle at ``now``; True when the factor was cut (not within the holdoff)."""
        if now - self._last_cut < self.spec.holdoff:
            return False
        self._last_cut = now
        self.factor = max(self.spec.floor, self.factor * self.spec.decrease)
        self.cuts += 1
        return True

    def succeeded(self, now: float, n: int = 1) -> bool:
        """``n`` successes at ``now``; True when the factor rose."""
        if self.factor >= 1.0 or now - self._last_cut < self.spec.holdoff:
            return False
        self.factor = min(1.0, self.factor + self.spec.increase * n)
        return True

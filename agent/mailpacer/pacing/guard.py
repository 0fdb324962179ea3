"""The reputation guard: a campaign stops itself before it ruins the sender's reputation.

Mailbox providers judge a sender by its hard-bounce and deferral rates. When, among the last
``window`` attempted recipients of a campaign, hard bounces exceed ``bounce_rate`` or
deferrals exceed ``deferral_rate``, the campaign should pause and say why: a stale list or a
provider pushing back is for an operator to look at, not to push through.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from mailpacer.ledger.states import RecipientState

__all__ = ["GuardTrip", "ReputationGuard"]


@dataclass(frozen=True)
class GuardTrip:
    guard: str  # "bounce_rate" | "deferral_rate"
    rate: float
    limit: float
    window: int

    def __str__(self) -> str:
        what = "hard bounces" if self.guard == "bounce_rate" else "deferrals"
        return (
            f"reputation guard: {self.rate:.1%} {what} among the last {self.window} attempts "
            f"(limit {self.limit:.0%})"
        )


@dataclass
class ReputationGuard:
    bounce_rate: float = 0.05
    deferral_rate: float = 0.30
    window: int = 500
    _recent: deque[str] = field(default_factory=deque, init=False, repr=False)
    _bounces: int = field(default=0, init=False)
    _deferrals: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("the guard's window must be at least 1")
        for name in ("bounce_rate", "deferral_rate"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name} {value!r}: must be above 0 and at most 1")

    def observe(self, states: Iterable[RecipientState]) -> GuardTrip | None:
        """Add attempted outcomes; returns the trip once the window is full and over a limit."""
        recent = self._recent
        for state in states:
            kind = (
                "bounce"
                if state is RecipientState.BOUNCED
                else "deferral"
                if state is RecipientState.DEFERRED
                else "other"
            )
            recent.append(kind)
            self._count(kind, 1)
            if len(recent) > self.window:
                self._count(recent.popleft(), -1)
        if len(recent) < self.window:
            return None  # too few attempts to judge
        bounces = self._bounces / len(recent)
        if bounces > self.bounce_rate:
            return GuardTrip("bounce_rate", bounces, self.bounce_rate, self.window)
        deferrals = self._deferrals / len(recent)
        if deferrals > self.deferral_rate:
            return GuardTrip("deferral_rate", deferrals, self.deferral_rate, self.window)
        return None

    def _count(self, kind: str, delta: int) -> None:
        if kind == "bounce":
            self._bounces += delta
        elif kind == "deferral":
            self._deferrals += delta

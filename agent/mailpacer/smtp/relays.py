"""Which relay a new SMTP session goes to: priority failover, weighted sharing, breakers.

Relays of the lowest ``priority`` number are used while any of them is usable; within that
tier, new sessions are shared by ``weight`` (smooth weighted round-robin, so 3:1 means three
sessions to one, interleaved, not in runs). Each relay has a circuit breaker: after
``threshold`` consecutive failures (connect errors, sessions lost, ``421``) it *opens* and is
skipped for ``cooldown`` seconds (doubling on each re-open, up to ``max_cooldown``); then it
is *half-open*: one session may probe it, and that session's first outcome closes the
breaker again or re-opens it. The clock is Trio's, so MockClock drives the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from mailpacer.config import RelayConfig

__all__ = ["BreakerState", "RelayPool", "RelayState"]

BreakerState = str  # "closed" | "half_open" | "open"

Listener = Callable[[str, BreakerState, str | None], None]


@dataclass
class RelayState:
    relay: RelayConfig
    state: BreakerState = "closed"
    failures: int = 0  # consecutive
    opened_at: float = 0.0
    cooldown: float = 0.0
    probing: bool = False  # a half-open probe session is out
    current_weight: int = 0  # smooth weighted round-robin
    last_error: str | None = None
    sessions: int = field(default=0)

    def usable(self, now: float) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open":
            return now >= self.opened_at + self.cooldown
        return not self.probing  # half-open: one probe at a time


class RelayPool:
    def __init__(
        self,
        relays: Sequence[RelayConfig],
        *,
        threshold: int = 3,
        cooldown: float = 30.0,
        max_cooldown: float = 300.0,
        on_change: Listener | None = None,
    ) -> None:
        if not relays:
            raise ValueError("at least one relay is needed")
        self.states = [RelayState(r) for r in relays]
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.on_change = on_change
        for state in self.states:
            self._notify(state)

    def _notify(self, state: RelayState) -> None:
        if self.on_change is not None:
            self.on_change(state.relay.name, state.state, state.last_error)

    def _state(self, relay: RelayConfig) -> RelayState:
        for state in self.states:
            if state.relay is relay:
                return state
        raise KeyError(relay.name)

    def choose(self) -> RelayConfig | None:
        """The relay for the next session, or None when every breaker is open."""
        now = trio.current_time()
        usable = [s for s in self.states if s.usable(now)]
        if not usable:
            return None
        tier = min(s.relay.priority for s in usable)
        candidates = [s for s in usable if s.relay.priority == tier]
        total = sum(s.relay.weight for s in candidates)
        for s in candidates:
            s.current_weight += s.relay.weight
        chosen = max(candidates, key=lambda s: s.current_weight)
        chosen.current_weight -= total
        if chosen.state == "open":  # cooled down: this session is the probe
            chosen.state = "half_open"
            self._notify(chosen)
        if chosen.state == "half_open":
            chosen.probing = True
        chosen.sessions += 1
        return chosen.relay

    def next_retry_in(self) -> float:
        """Seconds until an open breaker may be probed (0 when one is usable now)."""
        now = trio.current_time()
        if any(s.usable(now) for s in self.states):
            return 0.0
        waits = [s.opened_at + s.cooldown - now for s in self.states if s.state == "open"]
        return max(0.0, min(waits)) if waits else 0.0

    def succeeded(self, relay: RelayConfig) -> None:
        state = self._state(relay)
        state.failures = 0
        state.probing = False
        if state.state != "closed":
            state.state = "closed"
            state.cooldown = 0.0
            state.last_error = None
            self._notify(state)

    def released(self, relay: RelayConfig) -> None:
        """A probe session ended without an outcome either way: let another probe."""
        self._state(relay).probing = False

    def failed(self, relay: RelayConfig, error: str) -> None:
        state = self._state(relay)
        state.failures += 1
        state.last_error = error
        state.probing = False
        if state.state == "half_open" or state.failures >= self.threshold:
            was_open_before = state.cooldown > 0
            state.cooldown = (
                min(self.max_cooldown, state.cooldown * 2)
                if was_open_before
                else self.base_cooldown
            )
            state.state = "open"
            state.opened_at = trio.current_time()
            self._notify(state)

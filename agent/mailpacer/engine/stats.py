"""In-memory progress of a campaign run: counts by state, recent rate, ETA.

Kept in memory so the progress display, /healthz and /metrics never query the database.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import trio

from mailpacer.ledger.states import TERMINAL_STATES, RecipientState

__all__ = ["CampaignStats"]

RATE_WINDOW = 10.0


@dataclass
class CampaignStats:
    """Counts per recipient state ("active" = claimed or sending by this run)."""

    name: str
    counts: dict[str, int] = field(default_factory=dict)
    run: dict[str, int] = field(default_factory=dict)  # outcomes recorded by this run
    started_at: float = 0.0
    configured_rate: float | None = None  # messages/s when a rate limit applies
    _samples: deque[tuple[float, int]] = field(default_factory=deque)
    _sent_total: int = 0
    _plan_done_at: float | None = None  # Trio time the pacing plan finishes (inf: not in a year)

    def load(self, counts: dict[str, int]) -> None:
        self.counts = {state.value: 0 for state in RecipientState}
        self.counts.update(counts)
        self.counts["active"] = 0
        self.run = {}
        self.started_at = trio.current_time()
        self._samples.clear()
        self._samples.append((self.started_at, 0))

    @property
    def total(self) -> int:
        return sum(v for k, v in self.counts.items())

    @property
    def remaining(self) -> int:
        """Recipients not in a final state (pending, active, deferred)."""
        return sum(v for k, v in self.counts.items() if k not in TERMINAL_STATES)

    def claimed(self, previous: str, n: int = 1) -> None:
        self.counts[previous] -= n
        self.counts["active"] += n

    def settled(self, state: str, n: int = 1) -> None:
        self.counts["active"] -= n
        self.counts[state] += n
        self.run[state] = self.run.get(state, 0) + n
        if state == RecipientState.SENT:
            self._sent_total += n

    def sample(self) -> None:
        now = trio.current_time()
        self._samples.append((now, self._sent_total))
        while len(self._samples) > 2 and now - self._samples[1][0] > RATE_WINDOW:
            self._samples.popleft()

    @property
    def rate(self) -> float:
        """Messages sent per second over the last ~10 s."""
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    @property
    def todo(self) -> int:
        """Recipients to send now (pending and in this run's hands; deferred ones wait)."""
        return self.counts.get(RecipientState.PENDING, 0) + self.counts.get("active", 0)

    def plan(self, seconds: float | None) -> None:
        """What the pacing plan says (seconds until done, ``math.inf``: not within a year;
        None: nothing paces this campaign). Set at the writer's cadence by the runner."""
        self._plan_done_at = None if seconds is None else trio.current_time() + seconds

    @property
    def planned_eta(self) -> float | None:
        if self._plan_done_at is None or math.isinf(self._plan_done_at):
            return None
        return max(0.0, self._plan_done_at - trio.current_time())

    @property
    def observed_eta(self) -> float | None:
        """Seconds until nothing is left to send, at the current (or configured) rate."""
        todo = self.todo
        if todo == 0:
            return 0.0
        rate = self.rate
        if self.configured_rate is not None:
            rate = min(rate, self.configured_rate) if rate > 0 else self.configured_rate
        return todo / rate if rate > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds until done: the later of the pacing plan (windows, caps, ramps, pauses:
        what the rate alone cannot know) and the observed rate (what the plan cannot know:
        a slow relay, an unpaced blast). None: unknown, or not within a year."""
        observed = self.observed_eta
        if self._plan_done_at is None:
            return observed
        planned = self.planned_eta
        if planned is None:
            return None
        if self.todo == 0:
            return 0.0
        return planned if observed is None else max(planned, observed)

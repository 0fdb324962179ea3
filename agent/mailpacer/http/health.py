"""Liveness from in-memory heartbeats: a stalled scheduler makes /healthz fail."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

__all__ = ["HealthState"]


@dataclass
class HealthState:
    """Components register a heartbeat source; each must have beaten within ``max_age``."""

    max_age: float = 10.0
    started_at: float = field(default_factory=time.time)
    _beats: dict[str, Callable[[], float]] = field(default_factory=dict)
    _details: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)

    def watch(
        self,
        name: str,
        heartbeat: Callable[[], float],
        details: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """``heartbeat`` returns the trio.current_time() of the component's last beat."""
        self._beats[name] = heartbeat
        if details is not None:
            self._details[name] = details

    def forget(self, name: str) -> None:
        self._beats.pop(name, None)
        self._details.pop(name, None)

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        now = trio.current_time()
        components: dict[str, Any] = {}
        ok = True
        for name, beat in self._beats.items():
            age = now - beat()
            fresh = age <= self.max_age
            ok = ok and fresh
            entry: dict[str, Any] = {"ok": fresh, "heartbeat_age_seconds": round(age, 3)}
            if name in self._details:
                entry.update(self._details[name]())
            components[name] = entry
        return ok, {
            "status": "ok" if ok else "stalled",
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "components": components,
        }

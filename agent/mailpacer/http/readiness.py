"""Readiness from in-memory state, kept fresh by background monitors that may block safely.

Every probe that can hang (the database, a disk on a dead NFS mount, /proc reads) runs in a
worker thread under a timeout, abandoned when it overruns; the result is stored in memory and
/readyz, /healthz and /metrics only ever read that memory. A frozen database therefore makes
/readyz say "database: no answer within 2s" quickly, and never slows down an HTTP answer.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from mailpacer.hoststate import DEFAULT_SCRATCH, DEFAULT_TUNING_JSON, disk_state, read_host_state
from mailpacer.metrics import DatabaseStatus, Metrics

__all__ = ["DatabaseProbe", "Readiness", "watch_event_loop"]


def _mask(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<invalid database URL>"


class DatabaseProbe:
    """``SELECT 1`` on a fresh connection every ``interval`` seconds, ``timeout`` at most.

    Its own connection (no pool), so a probe never takes a connection the sender needs, and at
    most one probe thread at a time: while an abandoned probe still hangs, the next one reports
    failure at once instead of piling up threads.
    """

    def __init__(
        self, url: str, status: DatabaseStatus, *, interval: float = 2.0, timeout: float = 2.0
    ) -> None:
        self.url = url
        self.status = status
        self.interval = interval
        self.timeout = timeout
        self._busy = threading.Lock()  # held by the one thread talking to the database
        self._limiter = trio.CapacityLimiter(2)  # a hung probe + the one that reports it
        self._engine: Any = None

    def _create_engine(self) -> Any:
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        parsed = sa.engine.make_url(self.url)
        seconds = max(1, int(self.timeout + 0.999))
        if parsed.get_backend_name() == "sqlite":
            args: dict[str, Any] = {"timeout": self.timeout}
        else:
            args = {"connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds}
        return sa.create_engine(parsed, poolclass=NullPool, connect_args=args)

    def ping(self) -> float:
        """Blocking: connect, ``SELECT 1``, disconnect; the elapsed seconds."""
        import sqlalchemy as sa

        if self._engine is None:
            self._engine = self._create_engine()
        started = time.perf_counter()
        with self._engine.connect() as connection:
            connection.execute(sa.text("SELECT 1")).scalar()
        return time.perf_counter() - started

    def _ping_in_thread(self) -> float:
        if not self._busy.acquire(blocking=False):
            raise _Busy("the previous probe is still waiting for the database")
        try:
            return self.ping()
        finally:
            self._busy.release()

    async def probe_once(self) -> None:
        status = self.status
        try:
            with trio.move_on_after(self.timeout):
                latency = await trio.to_thread.run_sync(
                    self._ping_in_thread, abandon_on_cancel=True, limiter=self._limiter
                )
                status.up, status.checked, status.error = True, True, None
                status.latency_seconds = latency
                status.last_success = time.time()
                return
        except Exception as exc:
            status.up, status.checked = False, True
            status.error = _first_line(exc)
            return
        status.up, status.checked = False, True
        status.error = f"no answer within {self.timeout:g}s"

    async def run(self) -> None:
        while True:
            await self.probe_once()
            await trio.sleep(self.interval)


class _Busy(Exception):
    pass


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


async def watch_event_loop(metrics: Metrics, interval: float = 0.5) -> None:
    """Observe how late the loop wakes a task that sleeps ``interval`` seconds."""
    observe = metrics.event_loop_lag.observe
    while True:
        before = trio.current_time()
        await trio.sleep(interval)
        observe(max(0.0, trio.current_time() - before - interval))


@dataclass
class Readiness:
    """Components of /readyz; :meth:`run` keeps them fresh, :meth:`check` reads memory only."""

    metrics: Metrics
    database_url: str | None = None
    data_dir: Path | None = None
    scratch: Path | None = None
    tuning_json: Path | None = None
    min_free_bytes: int = 256 * 1024 * 1024
    min_free_ratio: float = 0.02
    db_interval: float = 2.0
    db_timeout: float = 2.0
    host_interval: float = 15.0
    extra: dict[str, Callable[[], tuple[bool, dict[str, Any]]]] = field(default_factory=dict)
    probe: DatabaseProbe | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.database_url is not None:
            self.metrics.database = DatabaseStatus(_mask(self.database_url))
            self.probe = DatabaseProbe(
                self.database_url,
                self.metrics.database,
                interval=self.db_interval,
                timeout=self.db_timeout,
            )

    @classmethod
    def for_ledger(cls, metrics: Metrics, database_url: str, **kwargs: Any) -> Readiness:
        """The data dir is the SQLite ledger's directory, or the working directory."""
        from sqlalchemy.engine import make_url

        data_dir = Path.cwd()
        with contextlib.suppress(Exception):
            parsed = make_url(database_url)
            if parsed.get_backend_name() == "sqlite" and parsed.database:
                data_dir = Path(parsed.database).resolve().parent
        return cls(metrics, database_url=database_url, data_dir=data_dir, **kwargs)

    async def _refresh_host(self) -> None:
        paths = [p for p in (self.data_dir,) if p is not None]
        scratch = self.scratch or DEFAULT_SCRATCH
        tuning = self.tuning_json or DEFAULT_TUNING_JSON

        def read() -> None:
            self.metrics.host = read_host_state(tuning, scratch)
            for path in paths:
                self.metrics.disks[str(path)] = disk_state(path)

        with trio.move_on_after(10):
            await trio.to_thread.run_sync(read, abandon_on_cancel=True)

    async def _host_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a monitor never takes the agent down
                await self._refresh_host()
            await trio.sleep(self.host_interval)

    async def run(self) -> None:
        """The background monitors; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_event_loop, self.metrics)
            nursery.start_soon(self._host_loop)
            if self.probe is not None:
                nursery.start_soon(self.probe.run)

    # -- answered from memory ---------------------------------------------------------

    def _disk(self, path: str) -> tuple[bool, dict[str, Any]]:
        disk = self.metrics.disks.get(path)
        if disk is None:
            return True, {"ok": True, "path": path, "detail": "not checked yet"}
        body = disk.as_dict()
        ok = disk.exists and disk.error is None
        if ok and disk.total_bytes:
            ok = disk.free_bytes >= self.min_free_bytes or disk.free_ratio >= self.min_free_ratio
            if not ok:
                body["detail"] = f"only {disk.free_bytes:,} bytes free"
        body["ok"] = ok
        return ok, body

    def check(self) -> tuple[bool, dict[str, Any]]:
        components: dict[str, Any] = {}
        ready = True
        db = self.metrics.database
        if db is not None:
            entry: dict[str, Any] = {"ok": db.up, "url": db.url}
            if db.latency_seconds is not None:
                entry["latency_seconds"] = round(db.latency_seconds, 4)
            if db.last_success is not None:
                entry["last_success_age_seconds"] = round(time.time() - db.last_success, 1)
            if db.error:
                entry["error"] = db.error
            components["database"] = entry
            ready = ready and db.up
        relays: dict[str, Any] = {}
        for relay in self.metrics.relays:
            labels = {"relay": relay.name}
            sample = self.metrics.registry.get_sample_value
            relays[relay.name] = {
                "ok": relay.breaker != "open",
                **relay.as_dict(),
                "connections": int(sample("mailpacer_smtp_connections", labels) or 0),
                "connect_failures": int(
                    sample("mailpacer_smtp_connect_failures_total", labels) or 0
                ),
            }
        if relays:
            usable = any(r["ok"] for r in relays.values())
            components["relays"] = {"ok": usable, "relays": relays}
            ready = ready and usable
        if self.data_dir is not None:
            ok, body = self._disk(str(self.data_dir))
            components["data_dir"] = body
            ready = ready and ok
        host = self.metrics.host
        if host is not None and host.scratch is not None:
            scratch = host.scratch
            entry = {"ok": True, **scratch.as_dict()}
            if scratch.exists and scratch.total_bytes and scratch.free_ratio < self.min_free_ratio:
                entry["ok"] = False
                entry["detail"] = f"scratch nearly full ({scratch.free_bytes:,} bytes free)"
                ready = False
            components["scratch"] = entry
        for name, provider in self.extra.items():
            ok, body = provider()
            components[name] = {"ok": ok, **body}
            ready = ready and ok
        return ready, {"status": "ready" if ready else "not ready", "components": components}

"""`mailpacer doctor`: the operator's health check, as a ✔ / ✘ table (or ``--json``).

Each database: connect time, a query's latency, pool state. Each relay: connect, EHLO,
STARTTLS, AUTH, then QUIT (no MAIL FROM: nothing is sent). The host: congestion control and the
sysctl values the tuner applied (tuning.json) against the live ones, nofile, free space of the
data directory and the scratch tmpfs. Every step has a timeout, so a hung database or relay
shows up as a ✘ instead of hanging the command. Passwords are never printed: database URLs and
relay names are shown masked, and error texts come from the masked names.

Exit status: 0 when every check passed (warnings "!" do not count), 1 when any failed, 2 on
bad input (an unparsable relay URL).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import trio

from mailpacer.commands import EXIT, UsageError
from mailpacer.config import ConfigError, RelayConfig, parse_relay_url
from mailpacer.hoststate import (
    DEFAULT_SCRATCH,
    DEFAULT_TUNING_JSON,
    DiskState,
    disk_state,
    read_host_state,
)

__all__ = ["Check", "DoctorOptions", "run_doctor"]

MIN_FREE_BYTES = 256 * 1024 * 1024
MIN_FREE_RATIO = 0.02
MARKS = {"ok": "✔", "fail": "✘", "warn": "!"}


@dataclass
class DoctorOptions:
    dbs: list[str] = field(default_factory=list)
    relays: list[str] = field(default_factory=list)
    as_json: bool = False
    data_dir: Path | None = None
    tuning_json: Path | None = None
    scratch: Path | None = None
    timeout: float = 10.0
    config: Path | None = None  # the agent's TOML: its database, relays, data and scratch dirs
    report_url: str | None = None  # the main server's progress endpoint
    report_secret_file: Path | None = None
    report: Any = None  # ReportConfig, from the above or the config's [report]
    unsubscribe: Any = None  # the config's [unsubscribe] (UnsubscribeSettings)


@dataclass
class Check:
    group: str  # database, relay, host, disk
    name: str
    status: str  # ok, fail, warn
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "name": self.name,
            "status": self.status,
            "ok": self.status != "fail",
            "detail": self.detail,
            **({"data": self.data} if self.data else {}),
        }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _mask_db(url: str) -> str:
    from mailpacer.ledger.store import mask_url

    return mask_url(url)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


# -- databases ------------------------------------------------------------------------


def _probe_database(url: str, timeout: float) -> dict[str, Any]:
    """Blocking: connect, SELECT 1 (latency), a second checkout from the pool, pool state."""
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if not database or not Path(database).exists():
            raise FileNotFoundError(f"no SQLite ledger at {database or '(no path)'}")
        args: dict[str, Any] = {"timeout": timeout}
    else:
        seconds = max(1, int(timeout))
        args = {"connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds}
    engine = sa.create_engine(parsed, connect_args=args, pool_size=2, max_overflow=0)
    try:
        started = time.perf_counter()
        with engine.connect() as connection:
            connected = time.perf_counter() - started
            started = time.perf_counter()
            connection.execute(sa.text("SELECT 1")).scalar()
            query = time.perf_counter() - started
            version = None
            if backend != "sqlite":
                version = connection.execute(sa.text("SELECT VERSION()")).scalar()
            pool_in_use = engine.pool.status()
        return {
            "backend": backend,
            "connect_seconds": round(connected, 4),
            "query_seconds": round(query, 4),
            "server_version": version,
            "pool": pool_in_use,
        }
    finally:
        engine.dispose()


async def check_database(url: str, limit: float) -> Check:
    shown = _mask_db(url)
    try:
        with trio.fail_after(limit):
            data = await trio.to_thread.run_sync(
                _probe_database, url, limit, abandon_on_cancel=True
            )
    except trio.TooSlowError:
        return Check("database", shown, "fail", f"no answer within {limit:g}s")
    except Exception as exc:
        from sqlalchemy.exc import ArgumentError

        if isinstance(exc, (ArgumentError, ValueError)) and "URL" in str(exc):
            return Check("database", shown, "fail", "invalid database URL")
        return Check("database", shown, "fail", _first_line(exc))
    detail = f"connect {_ms(data['connect_seconds'])}, SELECT 1 {_ms(data['query_seconds'])}"
    if data.get("server_version"):
        detail += f", server {data['server_version']}"
    return Check("database", shown, "ok", detail, data)


# -- relays ---------------------------------------------------------------------------


async def check_relay(relay: RelayConfig, limit: float) -> Check:
    from mailpacer.smtp.client import SMTPError, Timeouts
    from mailpacer.smtp.connect import open_relay

    timeouts = Timeouts(connect=limit, greeting=limit, ehlo=limit, starttls=limit, auth=limit)
    steps: list[str] = []
    started = time.perf_counter()
    try:
        with trio.fail_after(limit * 2):
            connection = await open_relay(relay, timeouts=timeouts)
    except trio.TooSlowError:
        return Check("relay", relay.name, "fail", f"no complete session within {limit * 2:g}s")
    except (SMTPError, OSError) as exc:
        message = str(exc)
        if relay.password:
            message = message.replace(relay.password, "***")
        return Check("relay", relay.name, "fail", message[:400])
    elapsed = time.perf_counter() - started
    steps.append("connect")
    steps.append("EHLO" if connection.esmtp else "HELO")
    if relay.tls == "starttls":
        steps.append("STARTTLS")
    elif relay.tls == "implicit":
        steps.insert(1, "TLS")
    if relay.username is not None:
        steps.append(f"AUTH as {relay.username}")
    extensions = sorted(connection.extensions.keywords)
    with trio.move_on_after(limit):
        await connection.quit()
    detail = f"{', '.join(steps)} ok in {_ms(elapsed)}; nothing sent"
    data = {"seconds": round(elapsed, 4), "steps": steps, "tls": connection.tls,
            "extensions": extensions}  # fmt: skip
    if relay.tls == "plain" and relay.username is None:
        return Check("relay", relay.name, "ok", detail + " (no TLS, no AUTH configured)", data)
    return Check("relay", relay.name, "ok", detail, data)


# -- the main server ------------------------------------------------------------------


async def check_main_server(config: Any, limit: float) -> Check:
    """POST a signed, counters-only progress report (no events, nothing changes at the
    receiver): reachable, TLS, and the signature accepted."""
    from mailpacer.report.client import ReportClient
    from mailpacer.report.protocol import build_document

    shown = config.url.split("?", 1)[0]
    document = build_document(
        source=config.source, first=None, last=None, events=[], campaigns=[],
        sent_at=time.time(), backlog=0,
    )  # fmt: skip
    started = time.perf_counter()
    async with ReportClient(replace(config, request_deadline=limit)) as client:
        attempt = await client.post(document)
    elapsed = time.perf_counter() - started
    if not attempt.ok:
        return Check("report", shown, "fail", attempt.reason or f"HTTP {attempt.status}")
    detail = f"HTTP {attempt.status} in {_ms(elapsed)}: reachable, signature accepted"
    return Check("report", shown, "ok", detail, {"status": attempt.status})


# -- host -----------------------------------------------------------------------------


def _disk_check(name: str, disk: DiskState, *, required: bool) -> Check:
    if not disk.exists:
        status = "fail" if required else "warn"
        return Check("disk", name, status, f"{disk.path} does not exist")
    if disk.error:
        return Check("disk", name, "fail", f"{disk.path}: {disk.error}")
    free_gib = disk.free_bytes / 2**30
    detail = (
        f"{disk.path} ({disk.fstype or '?'}): {free_gib:,.2f} GiB free of "
        f"{disk.total_bytes / 2**30:,.2f} GiB ({disk.free_ratio:.0%})"
    )
    low = disk.free_bytes < MIN_FREE_BYTES and disk.free_ratio < MIN_FREE_RATIO
    return Check("disk", name, "fail" if low else "ok", detail, disk.as_dict())


def host_checks(opts: DoctorOptions) -> list[Check]:
    """Blocking file reads (/proc, tuning.json, statvfs)."""
    scratch = opts.scratch or DEFAULT_SCRATCH
    tuning = opts.tuning_json or DEFAULT_TUNING_JSON
    host = read_host_state(tuning, scratch)
    checks: list[Check] = []
    if not host.tuning_present:
        checks.append(
            Check("host", "tuning.json", "warn", f"{tuning} not found: host not tuned by the tuner")
        )
    elif host.tuning_error:
        checks.append(Check("host", "tuning.json", "fail", host.tuning_error))
    else:
        counts = ", ".join(f"{k} {v}" for k, v in host.tuning_counts.items() if v)
        checks.append(
            Check(
                "host",
                "tuning.json",
                "ok",
                f"profile {host.tuning_profile or '?'}; sysctl keys: {counts or 'none'}",
                {"path": str(tuning), "keys": host.tuning_counts},
            )
        )
        drift = host.drifted
        if drift:
            text = "; ".join(f"{c.key} live {c.live!r} != applied {c.expected!r}" for c in drift)
            checks.append(Check("host", "sysctl drift", "fail", text[:600]))
        else:
            checks.append(
                Check(
                    "host",
                    "sysctl drift",
                    "ok",
                    f"all {len(host.sysctl_checks)} applied keys have their tuned live value",
                )
            )
    cc = host.congestion_control or "unknown"
    expected = next(
        (c.expected for c in host.sysctl_checks if c.key == "net.ipv4.tcp_congestion_control"),
        None,
    )
    if expected is not None and expected != cc:
        checks.append(
            Check("host", "congestion control", "fail", f"{cc} (tuning.json applied {expected})")
        )
    else:
        checks.append(Check("host", "congestion control", "ok", cc))
    soft, hard = host.nofile_soft, host.nofile_hard
    nofile = f"soft {soft:,}, hard {hard:,}"
    want = host.nofile_configured
    if want is not None and 0 <= soft < want:
        checks.append(
            Check(
                "host",
                "nofile",
                "warn",
                f"{nofile}: below the agent unit's {want:,} (this shell is not the service)",
            )
        )
    elif 0 <= soft < 4096:
        checks.append(Check("host", "nofile", "warn", f"{nofile}: low for many SMTP connections"))
    else:
        checks.append(Check("host", "nofile", "ok", nofile))
    data_dir = opts.data_dir or Path.cwd()
    checks.append(_disk_check("data dir", disk_state(data_dir), required=True))
    if host.scratch is not None:
        check = _disk_check("scratch", host.scratch, required=False)
        if host.scratch.exists and host.scratch.fstype not in (None, "tmpfs"):
            check.status = "warn" if check.status == "ok" else check.status
            check.detail += " (not a tmpfs)"
        checks.append(check)
    return checks


# -- the command ------------------------------------------------------------------------


def unsubscribe_check(settings: Any) -> Check:
    """What the messages' List-Unsubscribe headers will say (no network: the base URL is
    the public side of a proxy the agent cannot see from here)."""
    links = f"{settings.base_url}/unsubscribe/TOKEN"
    if settings.mailto_domain:
        links += f", mailto:unsubscribe+TOKEN@{settings.mailto_domain}"
    if not settings.base_url.startswith("https://"):
        return Check(
            "config", "unsubscribe", "warn",
            f"{links}: RFC 8058 one-click needs https (mailbox providers ignore http)",
        )  # fmt: skip
    return Check("config", "unsubscribe", "ok", links)


async def _run_checks(opts: DoctorOptions, relays: list[RelayConfig]) -> list[Check]:
    results: dict[int, list[Check]] = {}

    async def one(index: int, coro: Any) -> None:
        results[index] = [await coro]

    async def host() -> None:
        try:
            with trio.fail_after(opts.timeout):
                results[10_000] = await trio.to_thread.run_sync(
                    host_checks, opts, abandon_on_cancel=True
                )
        except trio.TooSlowError:
            results[10_000] = [Check("host", "host", "fail", "host checks hung (disk? /proc?)")]

    async with trio.open_nursery() as nursery:
        for i, url in enumerate(opts.dbs):
            nursery.start_soon(one, i, check_database(url, opts.timeout))
        for i, relay in enumerate(relays):
            nursery.start_soon(one, 1000 + i, check_relay(relay, opts.timeout))
        if opts.report is not None:
            nursery.start_soon(one, 5000, check_main_server(opts.report, opts.timeout))
        nursery.start_soon(host)
    if opts.unsubscribe is not None:
        results[6000] = [unsubscribe_check(opts.unsubscribe)]
    return [check for key in sorted(results) for check in results[key]]


def _table(checks: list[Check], out: TextIO) -> None:
    groups = max((len(c.group) for c in checks), default=5)
    names = min(max((len(c.name) for c in checks), default=5), 60)
    for check in checks:
        mark = MARKS[check.status]
        out.write(f"{mark} {check.group:<{groups}}  {check.name:<{names}}  {check.detail}\n")
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    out.write(
        f"{len(checks)} checks: {len(checks) - failed - warned} ok, {warned} warnings, "
        f"{failed} failed\n"
    )


def run_doctor(opts: DoctorOptions, out: TextIO = sys.stdout) -> int:
    try:
        relays = [parse_relay_url(url) for url in opts.relays]
        if opts.config is not None:
            from mailpacer.agentconfig import load_agent_config

            agent = load_agent_config(opts.config)
            relays = list(agent.relays) + relays
            if agent.report is not None and opts.report_url is None:
                from mailpacer.report.config import ReportConfig

                opts = replace(
                    opts,
                    report=ReportConfig(
                        url=agent.report.url,
                        secret=agent.report.secret,
                        source=agent.report.source,
                        detail=agent.report.detail,  # type: ignore[arg-type]
                    ),
                )
            opts = replace(
                opts,
                dbs=[agent.db, *opts.dbs],
                data_dir=opts.data_dir or agent.data_dir,
                scratch=opts.scratch or agent.scratch_dir,
                unsubscribe=agent.unsubscribe,
            )
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if opts.report_url is not None:
        from mailpacer.report.config import ReportConfig, ReportConfigError

        if opts.report_secret_file is None:
            raise UsageError("--report-url needs --report-secret-file FILE")
        try:
            secret = opts.report_secret_file.read_bytes().strip()
            opts = replace(opts, report=ReportConfig(url=opts.report_url, secret=secret))
        except OSError as exc:
            raise UsageError(f"cannot read --report-secret-file: {exc.strerror}") from None
        except ReportConfigError as exc:
            raise UsageError(str(exc).replace("report.", "--report-", 1)) from None
    if opts.timeout <= 0:
        raise UsageError(f"--timeout {opts.timeout:g}: must be greater than zero")
    checks = trio.run(_run_checks, opts, relays)
    failed = any(c.status == "fail" for c in checks)
    if opts.as_json:
        document = {"ok": not failed, "checks": [c.as_dict() for c in checks]}
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        _table(checks, out)
    return EXIT["attention"] if failed else EXIT["ok"]

"""The long-running agent's configuration file (TOML), as deployed by the Ansible role.

Secrets never sit in this file: passwords and tokens come from ``*_file`` keys naming files
(mode 0600, written by the role from Vault variables), so the file itself can be shown in
tickets and diffs. Every error names the file, the key and what would be accepted.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from mailpacer.config import ConfigError, RelayConfig, parse_duration, parse_relay_url
from mailpacer.engine.render_pool import render_workers
from mailpacer.pacing.spec import PacingConfig, parse_pacing
from mailpacer.unsubscribe.tokens import UnsubscribeSettings, check_base_url

__all__ = ["AgentConfig", "ReportSettings", "load_agent_config"]

MIN_POLL_INTERVAL = 15.0  # the ledger is polled at most 4 times a minute


@dataclass(frozen=True)
class ReportSettings:
    url: str
    secret: bytes = field(repr=False)
    detail: str = "failures"
    source: str = "mailpacer"


@dataclass(frozen=True)
class BounceSettings:
    """``[bounces]``: the listener for VERP return paths (``bounce+...@domain``)."""

    listen: tuple[str, int]
    domain: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class AgentConfig:
    db: str = field(repr=False)  # may hold the password read from db_password_file
    relays: tuple[RelayConfig, ...] = ()
    http: str | None = "127.0.0.1:8025"
    data_dir: Path | None = None
    scratch_dir: Path | None = None
    concurrency: int = 8
    max_campaigns: int = 4
    # processes rendering template campaigns, shared by the campaigns sent at once
    render_workers: int = field(default_factory=lambda: render_workers("auto"))
    poll_interval: float = MIN_POLL_INTERVAL
    log_format: str = "text"
    log_level: str = "info"
    report: ReportSettings | None = None
    api_token: str | None = field(default=None, repr=False)
    api_read_token: str | None = field(default=None, repr=False)
    api_file_roots: tuple[Path, ...] = ()  # where API-created campaigns' files may come from
    api_max_upload: int = 64 * 1024 * 1024  # bytes of one recipients upload
    pacing: PacingConfig | None = None  # [pacing]: the hierarchy (docs/pacing.md)
    bounces: BounceSettings | None = None
    unsubscribe: UnsubscribeSettings | None = None  # [unsubscribe]: signed one-click links
    source: str = "<defaults>"

    def secrets(self) -> list[str]:
        """Everything that must never reach a log line or a metric label."""
        found = [r.password for r in self.relays if r.password]
        if self.report is not None:
            found.append(self.report.secret.decode("utf-8", "replace"))
        found += [t for t in (self.api_token, self.api_read_token) if t]
        if self.bounces is not None:
            found.append(self.bounces.secret.decode("utf-8", "replace"))
        if self.unsubscribe is not None:
            found.append(self.unsubscribe.secret.decode("utf-8", "replace"))
        password = make_url(self.db).password
        if password:
            found.append(str(password))
        return found


_AGENT_KEYS = {
    "db", "db_password_file", "http", "data_dir", "scratch_dir", "concurrency",
    "max_campaigns", "poll_interval", "log_format", "log_level", "render_workers",
}  # fmt: skip
_RELAY_KEYS = {"url", "username", "password_file", "priority", "weight"}
_REPORT_KEYS = {"url", "secret_file", "detail", "source"}
_API_KEYS = {"token_file", "read_token_file", "file_roots", "max_upload_mb"}


def _read_secret(path_text: Any, where: str) -> str:
    if not isinstance(path_text, str) or not path_text:
        raise ConfigError(f"{where}: expected the path of a file holding the secret")
    try:
        value = Path(path_text).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path_text!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path_text!r} is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"{where}: {path_text!r} is empty")
    return value


def _unknown(table: dict[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(extra)} (known: {', '.join(sorted(known))})"
        )


def _int(table: dict[str, Any], key: str, where: str, default: int, low: int, high: int) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{where}.{key} = {value!r}: expected an integer from {low} to {high}")
    return value


def _str(table: dict[str, Any], key: str, where: str, default: str | None = None) -> str | None:
    value = table.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}.{key} = {value!r}: expected a string")
    return value


def _choice(table: dict[str, Any], key: str, where: str, default: str, allowed: set[str]) -> str:
    value = _str(table, key, where, default)
    if value not in allowed:
        raise ConfigError(
            f"{where}.{key} = {value!r}: expected one of {', '.join(sorted(allowed))}"
        )
    return value


def _render_workers(value: Any) -> int:
    try:
        return render_workers(value)
    except ValueError as exc:
        raise ConfigError(f"[agent].render_workers = {exc}") from None


def _database(agent: dict[str, Any]) -> str:
    db = _str(agent, "db", "[agent]")
    if not db:
        raise ConfigError(
            '[agent].db is required, e.g. db = "sqlite:////var/lib/mailpacer/ledger.db" '
            'or "mysql+pymysql://mailpacer@db.example.net/mailpacer"'
        )
    try:
        url = make_url(db)
    except (ArgumentError, ValueError):
        raise ConfigError(f"[agent].db: invalid database URL {db.split('@')[-1]!r}") from None
    if url.password:
        raise ConfigError(
            "[agent].db: put the password in a file named by db_password_file, not in the URL"
        )
    if "db_password_file" in agent:
        password = _read_secret(agent["db_password_file"], "[agent].db_password_file")
        scheme, rest = db.split("://", 1)
        user, at, host = rest.partition("@")
        if not at:
            raise ConfigError("[agent].db_password_file needs a user name in the db URL")
        db = f"{scheme}://{user}:{quote(password, safe='')}@{host}"
    return db


def _relays(items: Any) -> tuple[RelayConfig, ...]:
    if not isinstance(items, list) or not items:
        raise ConfigError(
            "at least one [[relay]] table is needed, e.g.\n"
            '  [[relay]]\n  url = "smtp+starttls://relay.example.net:587"'
        )
    relays = []
    for n, item in enumerate(items):
        where = f"[[relay]] #{n + 1}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a table")
        _unknown(item, _RELAY_KEYS, where)
        url = _str(item, "url", where)
        if not url:
            raise ConfigError(f"{where}: url is required, e.g. smtp://127.0.0.1:25")
        try:
            relay = parse_relay_url(url)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if relay.password:
            raise ConfigError(f"{where}: put the password in password_file, not in the URL")
        username = _str(item, "username", where) or relay.username
        password = None
        if "password_file" in item:
            password = _read_secret(item["password_file"], f"{where}.password_file")
            if not username:
                raise ConfigError(f"{where}: password_file needs a username")
        relays.append(
            replace(
                relay,
                username=username,
                password=password,
                priority=_int(item, "priority", where, relay.priority, 0, 1000),
                weight=_int(item, "weight", where, relay.weight, 1, 1000),
            )
        )
    return tuple(relays)


def _section(table: Any, where: str, keys: set[str]) -> bool:
    """False when an optional section is absent; refuses a non-table or unknown keys."""
    if table is None:
        return False
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    _unknown(table, keys, where)
    return True


def _report(table: Any) -> ReportSettings | None:
    where = "[report]"
    if not _section(table, where, _REPORT_KEYS):
        return None
    url = _str(table, "url", where)
    if not url:
        raise ConfigError(f"{where}.url is required (the main server's progress endpoint)")
    if "secret_file" not in table:
        raise ConfigError(f"{where}.secret_file is required (the shared HMAC secret)")
    secret = _read_secret(table["secret_file"], f"{where}.secret_file").encode()
    return ReportSettings(
        url=url,
        secret=secret,
        detail=_choice(table, "detail", where, "failures", {"failures", "all"}),
        source=_str(table, "source", where, "mailpacer") or "mailpacer",
    )


def _roots(value: Any) -> tuple[Path, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError('[api].file_roots: a list of directories, e.g. ["/srv/templates"]')
    roots = tuple(Path(v) for v in value)
    for root in roots:
        if not root.is_absolute():
            raise ConfigError(f"[api].file_roots: {str(root)!r} is not an absolute path")
    return roots


def _bounces(table: Any) -> BounceSettings | None:
    where = "[bounces]"
    if not _section(table, where, {"listen", "domain", "secret_file"}):
        return None
    listen = _str(table, "listen", where) or ""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}.listen = {listen!r}: expected HOST:PORT, e.g. 0.0.0.0:2526")
    domain = _str(table, "domain", where) or ""
    if not domain or "@" in domain or "." not in domain:
        raise ConfigError(f"{where}.domain = {domain!r}: the domain of the return paths")
    if "secret_file" not in table:
        raise ConfigError(f"{where}.secret_file is required (signs the return paths)")
    secret = _read_secret(table["secret_file"], f"{where}.secret_file").encode()
    if len(secret) < 16:
        raise ConfigError(f"{where}.secret_file: the secret needs at least 16 bytes")
    return BounceSettings((host.strip("[]"), int(port)), domain.lower(), secret)


def _unsubscribe(table: Any, bounces: BounceSettings | None) -> UnsubscribeSettings | None:
    where = "[unsubscribe]"
    if not _section(table, where, {"base_url", "secret_file", "mailto_domain"}):
        return None
    base_url = _str(table, "base_url", where) or ""
    if not base_url:
        raise ConfigError(
            f"{where}.base_url is required: the public URL of the agent's HTTP endpoint, "
            'e.g. "https://mail.example.com"'
        )
    try:
        base_url = check_base_url(base_url)
    except ValueError as exc:
        raise ConfigError(f"{where}.base_url = {base_url!r}: {exc}") from None
    if "secret_file" not in table:
        raise ConfigError(f"{where}.secret_file is required (signs the unsubscribe links)")
    secret = _read_secret(table["secret_file"], f"{where}.secret_file").encode()
    if len(secret) < 16:
        raise ConfigError(f"{where}.secret_file: the secret needs at least 16 bytes")
    mailto = _str(table, "mailto_domain", where)
    if mailto is not None:
        if not mailto or "@" in mailto or "." not in mailto or not mailto.isascii():
            raise ConfigError(f"{where}.mailto_domain = {mailto!r}: expected a domain name")
        if bounces is None:
            raise ConfigError(
                f"{where}.mailto_domain needs [bounces]: its listener receives the mail "
                "(point the domain's MX at [bounces].listen)"
            )
    else:
        mailto = bounces.domain if bounces is not None else None
    return UnsubscribeSettings(base_url, secret, mailto.lower() if mailto else None)


def load_agent_config(path: Path) -> AgentConfig:
    """Read and check ``path``; raise ConfigError naming the file and the bad key."""
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return _parse(document, str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _parse(document: dict[str, Any], source: str) -> AgentConfig:
    _unknown(
        document,
        {"agent", "relay", "report", "api", "pacing", "bounces", "unsubscribe"},
        "top level",
    )
    agent = document.get("agent")
    if not isinstance(agent, dict):
        raise ConfigError('an [agent] table with at least db = "..." is required')
    _unknown(agent, _AGENT_KEYS, "[agent]")
    api = document.get("api") or {}
    if not isinstance(api, dict):
        raise ConfigError("[api]: expected a table")
    _unknown(api, _API_KEYS, "[api]")
    poll = _str(agent, "poll_interval", "[agent]", "15s") or "15s"
    poll_interval = parse_duration(poll)
    if poll_interval < MIN_POLL_INTERVAL:
        raise ConfigError(
            f"[agent].poll_interval = {poll!r}: at least 15s (the ledger is polled at most "
            "4 times a minute)"
        )
    http = _str(agent, "http", "[agent]", "127.0.0.1:8025")
    data_dir = _str(agent, "data_dir", "[agent]")
    scratch_dir = _str(agent, "scratch_dir", "[agent]")
    bounces = _bounces(document.get("bounces"))
    unsubscribe = _unsubscribe(document.get("unsubscribe"), bounces)
    if unsubscribe is not None and not http:
        raise ConfigError(
            "[unsubscribe] needs [agent].http: the one-click endpoint is served there"
        )
    return AgentConfig(
        db=_database(agent),
        relays=_relays(document.get("relay")),
        http=http or None,
        data_dir=Path(data_dir) if data_dir else None,
        scratch_dir=Path(scratch_dir) if scratch_dir else None,
        concurrency=_int(agent, "concurrency", "[agent]", 8, 1, 1000),
        max_campaigns=_int(agent, "max_campaigns", "[agent]", 4, 1, 100),
        render_workers=_render_workers(agent.get("render_workers", "auto")),
        poll_interval=poll_interval,
        log_format=_choice(agent, "log_format", "[agent]", "text", {"text", "json"}),
        log_level=_choice(
            agent, "log_level", "[agent]", "info", {"debug", "info", "warning", "error"}
        ),
        report=_report(document.get("report")),
        api_token=(
            _read_secret(api["token_file"], "[api].token_file") if "token_file" in api else None
        ),
        api_read_token=(
            _read_secret(api["read_token_file"], "[api].read_token_file")
            if "read_token_file" in api
            else None
        ),
        api_file_roots=_roots(api.get("file_roots", [])),
        api_max_upload=_int(api, "max_upload_mb", "[api]", 64, 1, 100_000) * 1024 * 1024,
        pacing=parse_pacing(document["pacing"]) if "pacing" in document else None,
        bounces=bounces,
        unsubscribe=unsubscribe,
        source=source,
    )

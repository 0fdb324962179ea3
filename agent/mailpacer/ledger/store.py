"""The ledger: every recipient's fate, durable, on SQLite or MySQL/MariaDB.

All methods are blocking (DB-API drivers are); the agent calls them through
:class:`mailpacer.ledger.AsyncLedger`, which runs them in worker threads under a
capacity limiter no larger than the connection pool.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy import bindparam, event, func
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    SQLAlchemyError,
)
from sqlalchemy.pool import ConnectionPoolEntry

from mailpacer.ledger.migrations import SCHEMA_VERSION, migrate
from mailpacer.ledger.schema import agents, campaigns, events, recipients, suppressions
from mailpacer.ledger.states import CampaignState, RecipientState

__all__ = [
    "Campaign",
    "Claimed",
    "Ledger",
    "LedgerError",
    "Outcome",
    "mask_url",
]

R = RecipientState
P = ParamSpec("P")
T = TypeVar("T")


class LedgerError(Exception):
    """The ledger cannot be opened or used; the message is meant for the operator."""


def mask_url(url: str | URL) -> str:
    """The database URL with its password hidden."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError):
        return "<invalid database URL>"
    return parsed.render_as_string(hide_password=True)


@dataclass(frozen=True, slots=True)
class Campaign:
    id: int
    name: str
    status: str
    sender: str
    template_dir: str
    source: str | None
    source_fingerprint: str | None
    settings: dict[str, Any]
    created_at: float
    finished_at: float | None
    note: str | None = None
    control: str | None = None  # "pause": held by an operator


@dataclass(slots=True)
class Claimed:
    """A recipient leased to this agent."""

    id: int
    email: str
    variables: str  # JSON text; decoded where it is rendered
    attempts: int
    source_row: int | None
    first_attempt_at: float | None
    previous: str  # the state it was claimed from (pending or deferred)


@dataclass(slots=True)
class Outcome:
    """What happened to one recipient, to be written in a batch."""

    recipient_id: int
    state: RecipientState
    code: int | None = None
    reply: str | None = None
    next_attempt_at: float = 0.0
    attempted: bool = True
    at: float = 0.0


class _Prepared:
    """A statement compiled once by SQLAlchemy, executed through the driver directly.

    SQLAlchemy's per-execution parameter processing costs more than SQLite's own work on
    the hot paths (claims, outcomes, imports), so those bypass it: same SQL, same dialect.
    """

    def __init__(self, statement: sa.ClauseElement, dialect: sa.Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self.names = getattr(compiled, "positiontup", None)
        self.defaults = dict(compiled.params)

    def one(self, conn: Connection, params: Mapping[str, Any]) -> sa.CursorResult[Any]:
        defaults = self.defaults
        row: Any
        if self.names is None:
            row = {**defaults, **params}
        else:
            row = tuple(params[n] if n in params else defaults[n] for n in self.names)
        return conn.exec_driver_sql(self.sql, row)

    def run(self, conn: Connection, params: Sequence[Mapping[str, Any]]) -> int:
        defaults = self.defaults
        rows: list[Any]
        if self.names is None:
            rows = [{**defaults, **p} for p in params]
        else:
            names = self.names
            rows = [tuple(p[n] if n in p else defaults[n] for n in names) for p in params]
        result = conn.exec_driver_sql(self.sql, rows)
        return int(result.rowcount or 0)


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # Transactions are ours, not pysqlite's: its legacy mode starts a transaction only
    # before the first write, so a claim's SELECT ran outside it and two processes could
    # claim the same rows. ``_sqlite_begin`` emits BEGIN (reads) or BEGIN IMMEDIATE (writes:
    # the write lock is taken before the SELECT, so claims are serialised).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL: readers (status, HTTP) never block the writer; NORMAL: no fsync per commit,
    # still safe against a process crash (the test kills the process, not the machine).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    write = conn.get_execution_options().get("mailpacer_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


# MySQL/MariaDB errors after which the whole transaction may simply be run again.
_RETRYABLE_MYSQL = {1205, 1213}  # lock wait timeout, deadlock


def _retry_on_conflict(method: Callable[P, T]) -> Callable[P, T]:
    """Run a write transaction again (up to 5 times) when MariaDB picks it as a deadlock victim.

    A rolled-back transaction changed nothing, so running it again is exact.
    """

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        for attempt in range(5):
            try:
                return method(*args, **kwargs)
            except DBAPIError as exc:
                code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
                if code not in _RETRYABLE_MYSQL or attempt == 4:
                    raise
                time.sleep(random.uniform(0.005, 0.02) * 2**attempt)
        raise AssertionError("unreachable")

    return wrapper


def _suppression_key(value: str) -> tuple[str, str]:
    from mailpacer.message.address import InvalidAddress, parse_address

    text = value.strip()
    try:
        if "@" in text:
            return "address", parse_address(text).key
        return "domain", parse_address(f"x@{text}").key.rpartition("@")[2]
    except InvalidAddress as exc:
        raise LedgerError(f"cannot suppress {value!r}: {exc}") from None


CONNECT_TIMEOUT = 5.0  # TCP connect + the server's greeting + authentication
READ_TIMEOUT = 30.0  # one query (MySQL/MariaDB)
POOL_SIZE = 10
POOL_MAX = 20
# MySQL errors worth another connection attempt (can't connect, gone away, lost).
_RETRY_CONNECT = {2003, 2006, 2013}


def _mysql_connect(read_timeout: float) -> Callable[..., Any]:
    """A frozen server accepts TCP but never greets: pymysql would wait ``read_timeout``
    (30 s) for the greeting. Connect with the short timeout, then allow queries the long one."""

    def do_connect(dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        connection = dialect.loaded_dbapi.connect(*cargs, **cparams)
        connection._read_timeout = read_timeout
        return connection

    return do_connect


CONTROL_PAUSE = "pause"  # campaigns.control: an operator paused it (`campaign pause`)
RECLAIM_EVERY = 30.0  # seconds between claim()'s sweeps for expired leases
HEARTBEAT_EVERY = 10.0  # seconds between claim()'s agent heartbeats

# Written exactly like the SQLite partial index's condition, so that index is used.
_LEASED = sa.text("recipients.status IN ('claimed', 'sending')")


def _dead_local(owner: str) -> bool:
    """True when ``owner`` ("host:pid") is a process of this host that no longer exists."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


class Ledger:
    """Blocking access to the ledger database."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        """Open (lazily) the ledger at ``url``.

        MySQL/MariaDB: connecting (TCP and the server's greeting) gives up after
        ``connect_timeout`` s, a query after ``read_timeout`` s; the pool holds at most
        ``pool_size`` connections (default 10, at most 20; also ``?pool_size=N`` in the URL),
        each pinged before use.
        """
        self.connect_timeout = connect_timeout
        self.url_text = mask_url(url)
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError) as exc:
            shown = re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)  # never show a password
            detail = f" ({exc})" if isinstance(exc, ValueError) else ""
            raise LedgerError(
                f"invalid database URL {shown!r}{detail}: expected e.g. sqlite:///./mailpacer.db "
                "or mysql+pymysql://user:password@host/database"
            ) from None
        self.url = parsed
        self.backend = parsed.get_backend_name()
        if self.backend not in ("sqlite", "mysql", "mariadb"):
            raise LedgerError(
                f"unsupported database {self.url_text!r}: use sqlite:/// or mysql+pymysql://"
            )
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if self.backend == "sqlite":
            database = parsed.database or ""
            if not database or database == ":memory:":
                raise LedgerError("the SQLite ledger needs a file: sqlite:///path/to/ledger.db")
            self.sqlite_path: Path | None = Path(database).resolve()
            if not self.sqlite_path.parent.is_dir():
                raise LedgerError(
                    f"cannot create the ledger {str(self.sqlite_path)!r}: "
                    f"directory {str(self.sqlite_path.parent)!r} does not exist"
                )
            kwargs["connect_args"] = {"timeout": connect_timeout}
        else:
            self.sqlite_path = None
            in_url = parsed.query.get("pool_size")
            parsed = parsed.difference_update_query(["pool_size"])
            self.url = parsed
            try:
                size = int(in_url) if isinstance(in_url, str) else (pool_size or POOL_SIZE)
            except ValueError:
                size = -1
            if not 1 <= size <= POOL_MAX:
                raise LedgerError(
                    f"pool_size {in_url or pool_size!r} for {self.url_text}: must be a number "
                    f"from 1 to {POOL_MAX}"
                )
            kwargs.update(
                pool_size=size,
                max_overflow=0,
                pool_timeout=connect_timeout,
                pool_recycle=3600,
                # READ COMMITTED: FOR UPDATE SKIP LOCKED then locks only the rows it returns;
                # REPEATABLE READ's gap locks made concurrent claimers deadlock.
                isolation_level="READ COMMITTED",
                connect_args={
                    "connect_timeout": connect_timeout,
                    # until the handshake is done; then read_timeout (see _mysql_connect)
                    "read_timeout": connect_timeout,
                    "write_timeout": read_timeout,
                    "charset": "utf8mb4",
                },
            )
        try:
            self.engine: Engine = sa.create_engine(parsed, **kwargs)
        except (NoSuchModuleError, ArgumentError, ImportError) as exc:
            raise LedgerError(f"cannot use database {self.url_text!r}: {exc}") from None
        if self.backend == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            event.listen(self.engine, "do_connect", _mysql_connect(read_timeout))
        self._writes = self.engine.execution_options(mailpacer_write=True)
        self._last_reclaim = float("-inf")
        self._last_heartbeat = float("-inf")
        self._upsert_ignore = "OR IGNORE" if self.backend == "sqlite" else "IGNORE"
        self._prepare_statements()

    # -- set-up ------------------------------------------------------------------

    def _prepare_statements(self) -> None:
        t = recipients.c
        self._record_stmt = (
            recipients.update()
            .where(t.id == bindparam("rid"))
            # (no IN here: expanding parameters cannot be used with executemany)
            .where(sa.or_(t.status == R.CLAIMED.value, t.status == R.SENDING.value))
            .values(
                status=bindparam("st"),
                attempts=t.attempts + bindparam("inc"),
                last_code=bindparam("code"),
                last_reply=bindparam("reply"),
                next_attempt_at=bindparam("nxt"),
                updated_at=bindparam("now"),
                sent_at=func.coalesce(bindparam("sent", type_=sa.Double), t.sent_at),
                first_attempt_at=func.coalesce(t.first_attempt_at, bindparam("first")),
                lease_owner=None,
                lease_expires=None,
            )
        )
        self._insert_stmt = recipients.insert().prefix_with(self._upsert_ignore)
        columns = (
            "campaign_id", "email", "email_key", "source_row", "variables", "status",
            "attempts", "next_attempt_at", "updated_at",
        )  # fmt: skip
        dialect = self.engine.dialect
        self._placeholder = "?" if dialect.paramstyle == "qmark" else "%s"
        r = recipients.c
        claim_columns = (r.id, r.email, r.variables, r.attempts, r.source_row, r.first_attempt_at)
        due = (
            sa.select(*claim_columns)
            .where(
                r.campaign_id == bindparam("cid"),
                sa.text(f"recipients.status = '{R.DEFERRED.value}'"),
                r.next_attempt_at <= bindparam("now"),
            )
            .order_by(r.next_attempt_at)
            .limit(bindparam("lim"))
        )
        fresh = (
            sa.select(*claim_columns)
            .where(
                r.campaign_id == bindparam("cid"),
                sa.text(f"recipients.status = '{R.PENDING.value}'"),
            )
            .order_by(r.id)
            .limit(bindparam("lim"))
        )
        if self.backend != "sqlite":
            # MariaDB's optimizer prefers walking the primary key for ORDER BY id LIMIT,
            # i.e. through every finished row (0.5 s per claim at 200k rows); the
            # (campaign, status, id) index gives the due rows in order directly (~ms).
            due = due.with_hint(recipients, "FORCE INDEX (ix_recipients_state_due)")
            fresh = fresh.with_hint(recipients, "FORCE INDEX (ix_recipients_state_id)")
            due = due.with_for_update(skip_locked=True)
            fresh = fresh.with_for_update(skip_locked=True)
        self._claim_due = _Prepared(due, dialect)
        self._claim_fresh = _Prepared(fresh, dialect)
        self._record_many = _Prepared(self._record_stmt, dialect)
        # The same, only while this agent still holds the lease: an agent whose lease expired
        # (and was taken over) must not overwrite the new holder's row.
        self._record_owned_many = _Prepared(
            self._record_stmt.where(t.lease_owner == bindparam("owner")), dialect
        )
        self._insert_many = _Prepared(
            self._insert_stmt.values({c: bindparam(c) for c in columns}), dialect
        )

    def _write(self) -> contextlib.AbstractContextManager[Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, the write lock taken up front)."""
        return self._writes.begin()

    def _describe(self, exc: BaseException) -> str:
        original = getattr(exc, "orig", None) or exc
        return f"{type(original).__name__}: {original}"

    def check(self) -> None:
        """Open one connection, or raise LedgerError with what went wrong.

        Up to 3 attempts with exponential backoff and jitter while the server refuses or
        drops connections, all within ``connect_timeout`` (a server that does not answer at
        all costs one timeout, not three). Wrong password, unknown database: no retry.
        """
        started = time.monotonic()
        for attempt in range(3):
            try:
                with self.engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
                return
            except (DBAPIError, SQLAlchemyError) as exc:
                orig = getattr(exc, "orig", None)
                code = orig.args[0] if orig is not None and orig.args else None
                pause = 0.25 * 2**attempt * random.uniform(0.8, 1.2)
                elapsed = time.monotonic() - started
                if (
                    attempt < 2
                    and code in _RETRY_CONNECT
                    and elapsed + pause < self.connect_timeout
                ):
                    time.sleep(pause)
                    continue
                hint = ""
                if elapsed >= self.connect_timeout * 0.9:
                    hint = f" (no answer within {self.connect_timeout:g} s)"
                raise LedgerError(
                    f"cannot open the ledger {self.url_text}{hint}: {self._describe(exc)}"
                ) from None

    def upgrade(
        self,
        target: int = SCHEMA_VERSION,
        *,
        on_step: Callable[[int, str], None] | None = None,
    ) -> int:
        """Create or upgrade the schema (see ``migrations``); return the version now in place."""
        try:
            with self._writes.connect() as conn:
                mysql = self.backend != "sqlite"
                if mysql:
                    got = conn.exec_driver_sql("SELECT GET_LOCK('mailpacer_schema', 60)").scalar()
                    conn.commit()
                    if got != 1:
                        raise LedgerError(
                            f"cannot prepare the ledger {self.url_text}: another process has "
                            "been upgrading its schema for 60 s"
                        )
                try:
                    before, version = migrate(conn, target, on_step=on_step)
                finally:
                    if mysql:
                        conn.exec_driver_sql("SELECT RELEASE_LOCK('mailpacer_schema')")
                        conn.commit()
        except (DBAPIError, SQLAlchemyError) as exc:
            raise LedgerError(
                f"cannot prepare the ledger {self.url_text}: {self._describe(exc)}"
            ) from None
        if before > SCHEMA_VERSION:
            raise LedgerError(
                f"the ledger {self.url_text} has schema version {before}, newer than this "
                f"mailpacer understands ({SCHEMA_VERSION}); upgrade mailpacer"
            )
        return version

    def dispose(self) -> None:
        self.engine.dispose()

    # -- campaigns ---------------------------------------------------------------

    @staticmethod
    def _campaign(row: sa.Row[Any]) -> Campaign:
        m = row._mapping
        return Campaign(
            id=m["id"],
            name=m["name"],
            status=m["status"],
            sender=m["sender"],
            template_dir=m["template_dir"],
            source=m["source"],
            source_fingerprint=m["source_fingerprint"],
            settings=json.loads(m["settings"] or "{}"),
            created_at=m["created_at"],
            finished_at=m["finished_at"],
            note=m["note"],
            control=m["control"],
        )

    def campaign_by_name(self, name: str) -> Campaign | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(campaigns).where(campaigns.c.name == name)).first()
        return self._campaign(row) if row else None

    def campaign_by_id(self, campaign_id: int) -> Campaign | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(campaigns).where(campaigns.c.id == campaign_id)).first()
        return self._campaign(row) if row else None

    def list_campaigns(self) -> list[Campaign]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(campaigns).order_by(campaigns.c.id)).all()
        return [self._campaign(r) for r in rows]

    def create_campaign(
        self,
        name: str,
        *,
        sender: str,
        template_dir: str,
        settings: Mapping[str, Any],
        source: str | None = None,
    ) -> Campaign:
        """Create a campaign. If another agent created the same one (same name, sender and
        template) a moment before, that one is returned; a different one is an error."""
        now = time.time()
        try:
            with self._write() as conn:
                conn.execute(
                    campaigns.insert().values(
                        name=name,
                        status=CampaignState.READY.value,
                        sender=sender,
                        template_dir=template_dir,
                        source=source,
                        settings=json.dumps(dict(settings), sort_keys=True),
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            existing = self.campaign_by_name(name)
            if existing is None or (existing.sender, existing.template_dir) != (
                sender,
                template_dir,
            ):
                raise LedgerError(
                    f"a campaign named {name!r} already exists in {self.url_text} with another "
                    "sender or template"
                ) from None
            return existing
        campaign = self.campaign_by_name(name)
        assert campaign is not None
        return campaign

    def runnable_campaigns(self, now: float) -> list[Campaign]:
        """Campaigns with work due now and not stopped by an operator: one query (the
        agent's poll). Work due: pending recipients, deferred ones whose time has come, or
        leases that expired (a dead agent's)."""
        c = campaigns.c
        r = recipients.c
        due = (
            sa.select(sa.literal(1))
            .select_from(recipients)
            .where(
                r.campaign_id == c.id,
                sa.or_(
                    r.status == R.PENDING.value,
                    sa.and_(r.status == R.DEFERRED.value, r.next_attempt_at <= now),
                    sa.and_(
                        r.status.in_([R.CLAIMED.value, R.SENDING.value]), r.lease_expires < now
                    ),
                ),
            )
            .exists()
        )
        query = (
            sa.select(campaigns)
            .where(
                c.status.in_(
                    [
                        CampaignState.READY.value,
                        CampaignState.RUNNING.value,
                        CampaignState.PAUSED.value,
                    ]
                ),
                sa.or_(c.control.is_(None), c.control != CONTROL_PAUSE),
                due,
            )
            .order_by(c.id)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [self._campaign(row) for row in rows]

    def update_campaign(self, campaign_id: int, **values: Any) -> None:
        """Change a campaign's columns. A cancelled campaign stays cancelled (a sender that
        stops after ``campaign cancel`` must not turn it back into *paused*)."""
        if "settings" in values:
            values["settings"] = json.dumps(values["settings"], sort_keys=True)
        values["updated_at"] = time.time()
        c = campaigns.c
        with self._write() as conn:
            if "status" in values and values["status"] != CampaignState.CANCELLED.value:
                status = values.pop("status")
                extra = {"control": None} if status == CampaignState.RUNNING.value else {}
                conn.execute(  # a sender starting on an operator-paused campaign resumes it
                    campaigns.update()
                    .where(c.id == campaign_id, c.status != CampaignState.CANCELLED.value)
                    .values(status=status, **extra)
                )
            conn.execute(campaigns.update().where(c.id == campaign_id).values(**values))

    def set_campaign_status(
        self,
        campaign_id: int,
        status: CampaignState,
        *,
        allowed_from: Sequence[CampaignState],
        control: str | None = None,
    ) -> bool:
        """Move a campaign to ``status`` if it is in one of ``allowed_from`` (atomically).

        ``control`` is the operator's standing order (``"pause"``), cleared otherwise.
        """
        c = campaigns.c
        with self._write() as conn:
            changed = conn.execute(
                campaigns.update()
                .where(c.id == campaign_id, c.status.in_([s.value for s in allowed_from]))
                .values(status=status.value, control=control, updated_at=time.time())
            ).rowcount
        return bool(changed)

    @_retry_on_conflict
    def requeue(
        self,
        campaign_id: int,
        from_state: RecipientState,
        to_state: RecipientState,
        *,
        note: str,
        emails: Sequence[str] | None = None,
        now: float,
    ) -> int:
        """Operator decisions: failed/deferred/uncertain -> pending (send again), or
        uncertain -> sent. ``emails`` limits it to those addresses (case-insensitive)."""
        t = recipients.c
        conditions = [t.campaign_id == campaign_id, t.status == from_state.value]
        if emails is not None:
            conditions.append(t.email_key.in_([e.strip().lower() for e in emails]))
        values: dict[str, Any] = {
            "status": to_state.value,
            "updated_at": now,
            "lease_owner": None,
            "lease_expires": None,
            "last_reply": sa.func.coalesce(t.last_reply, "") + f" [{note}]",
        }
        if to_state is R.PENDING:
            values["next_attempt_at"] = 0.0
        with self._write() as conn:
            changed = int(
                conn.execute(recipients.update().where(*conditions).values(**values)).rowcount or 0
            )
            if changed:
                conn.execute(
                    campaigns.update()
                    .where(
                        campaigns.c.id == campaign_id,
                        campaigns.c.status == CampaignState.FINISHED.value,
                    )
                    .values(status=CampaignState.READY.value, finished_at=None, updated_at=now)
                )
        return changed

    # -- recipients --------------------------------------------------------------

    @_retry_on_conflict
    def insert_recipients(self, campaign_id: int, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert new recipients; an address already in the campaign is skipped.

        ``rows`` carry ``email``, ``email_key``, ``source_row`` and ``variables`` (JSON).
        Returns how many were new.
        """
        if not rows:
            return 0
        now = time.time()
        params = [
            {
                "campaign_id": campaign_id,
                "email": r["email"],
                "email_key": r["email_key"],
                "source_row": r["source_row"],
                "variables": r["variables"],
                "status": R.PENDING.value,
                "attempts": 0,
                "next_attempt_at": 0.0,
                "updated_at": now,
            }
            for r in rows
        ]
        with self._write() as conn:
            return self._insert_many.run(conn, params)

    @staticmethod
    def _count(conn: Connection, campaign_id: int) -> int:
        return int(
            conn.execute(
                sa.select(func.count()).where(recipients.c.campaign_id == campaign_id)
            ).scalar_one()
        )

    def count_recipients(self, campaign_id: int) -> int:
        with self.engine.connect() as conn:
            return self._count(conn, campaign_id)

    def state_counts(self, campaign_id: int) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(recipients.c.status, func.count())
                .where(recipients.c.campaign_id == campaign_id)
                .group_by(recipients.c.status)
            ).all()
        counts = {state.value: 0 for state in RecipientState}
        for status, count in rows:
            counts[str(status)] = int(count)
        return counts

    @_retry_on_conflict
    def recover(
        self, campaign_id: int, owner: str | None, now: float | None = None
    ) -> dict[str, int]:
        """Settle what a stopped or crashed agent left behind.

        Claimed rows (never on the wire) go back to pending. Rows in *sending* may have
        reached the relay: they become *uncertain* and are never resent silently.
        ``owner=None`` takes every row (SQLite: we hold the only lock); otherwise this
        owner's rows, rows whose lease has expired, and rows of agents on this host whose
        process is gone (owner ``host:pid``; a SIGKILLed sender's rows need not wait for
        their lease to expire).
        """
        now = time.time() if now is None else now
        t = recipients.c
        with self._write() as conn:
            scope: Any = t.campaign_id == campaign_id
            if owner is not None:
                owners = conn.execute(
                    sa.select(t.lease_owner)
                    .where(t.campaign_id == campaign_id, _LEASED)
                    .group_by(t.lease_owner)
                ).scalars()
                dead = [o for o in owners if o is not None and o != owner and _dead_local(o)]
                scope = sa.and_(
                    scope,
                    _LEASED,
                    sa.or_(t.lease_owner.in_([owner, *dead]), t.lease_expires < now),
                )
            counts = self._settle_leases(conn, scope, now)
        return counts

    @staticmethod
    def _settle_leases(conn: Connection, scope: Any, now: float) -> dict[str, int]:
        t = recipients.c
        released = conn.execute(
            recipients.update()
            .where(scope, t.status == R.CLAIMED.value)
            .values(status=R.PENDING.value, lease_owner=None, lease_expires=None, updated_at=now)
        ).rowcount
        uncertain = conn.execute(
            recipients.update()
            .where(scope, t.status == R.SENDING.value)
            .values(
                status=R.UNCERTAIN.value,
                lease_owner=None,
                lease_expires=None,
                updated_at=now,
                last_reply=sa.func.coalesce(t.last_reply, "")
                + " [agent stopped after handing the message to the relay; delivery unknown]",
            )
        ).rowcount
        return {"released": int(released or 0), "uncertain": int(uncertain or 0)}

    @_retry_on_conflict
    def reclaim_expired(self, campaign_id: int, now: float) -> dict[str, int]:
        """Leases past their expiry (their agent is dead or stuck): claimed -> pending,
        sending -> uncertain. ``claim`` does this by itself every ``RECLAIM_EVERY`` seconds."""
        t = recipients.c
        with self._write() as conn:
            return self._settle_leases(
                conn, sa.and_(t.campaign_id == campaign_id, _LEASED, t.lease_expires < now), now
            )

    # -- agents ------------------------------------------------------------------------

    def heartbeat(self, owner: str, now: float) -> None:
        """Record that agent ``owner`` ("host:pid") is alive (``claim`` calls this too)."""
        with self._write() as conn:
            self._heartbeat(conn, owner, now)
        self._last_heartbeat = now

    @staticmethod
    def _heartbeat(conn: Connection, owner: str, now: float) -> None:
        updated = conn.execute(
            agents.update().where(agents.c.id == owner).values(heartbeat=now)
        ).rowcount
        if not updated:
            host, _, pid = owner.rpartition(":")
            conn.execute(
                agents.insert().values(
                    id=owner[:64],
                    host=(host or owner)[:255],
                    pid=int(pid) if pid.isdigit() else None,
                    started_at=now,
                    heartbeat=now,
                )
            )

    # -- suppressions ------------------------------------------------------------------

    def add_suppression(
        self, value: str, *, reason: str | None = None, source: str | None = None, now: float
    ) -> bool:
        """Suppress an address (``a@b``) or a whole domain (``b``); False if already there."""
        kind, key = _suppression_key(value)
        with self._write() as conn:
            inserted = conn.execute(
                suppressions.insert()
                .prefix_with(self._upsert_ignore)
                .values(kind=kind, value=key, reason=reason, source=source, created_at=now)
            ).rowcount
        return bool(inserted)

    @_retry_on_conflict
    def mark_bounced(
        self, recipient_id: int, reply: str, *, now: float, report: bool = False
    ) -> str | None:
        """A hard bounce (a DSN) for a message already handed over: the recipient becomes
        *bounced* and its address suppressed, in one transaction; with ``report`` an outbox
        event tells the main server. Returns the address (None: no such recipient).

        A bounce can beat the agent's own outcome write (the row is still *sending*: that
        write then changes nothing) or follow a retry (deferred, pending again after a
        resend); a claimed row (about to be sent) and final states stay as they are."""
        t = recipients.c
        bounceable = [R.SENT, R.UNCERTAIN, R.DEFERRED, R.SENDING, R.PENDING]
        with self._write() as conn:
            row = conn.execute(
                sa.select(t.email, t.email_key, t.campaign_id).where(t.id == recipient_id)
            ).first()
            if row is None:
                return None
            changed = conn.execute(
                recipients.update()
                .where(t.id == recipient_id, t.status.in_([s.value for s in bounceable]))
                .values(status=R.BOUNCED.value, last_reply=reply[:2000], updated_at=now)
            ).rowcount
            conn.execute(
                suppressions.insert()
                .prefix_with(self._upsert_ignore)
                .values(kind="address", value=row.email_key, reason=reply[:500], source="dsn",
                        created_at=now)
            )  # fmt: skip
            if changed and report:
                payload = {"email": row.email, "reply": reply}
                self._insert_events(
                    conn, [(row.campaign_id, recipient_id, "recipient.bounced", payload)], now
                )
        return str(row.email)

    @_retry_on_conflict
    def unsubscribe(
        self, campaign_id: int, address: str, *, via: str, now: float, report: bool = False
    ) -> bool:
        """A signed unsubscribe link was used: the address goes on the suppression list
        (reason ``unsubscribed``, source ``campaign:<name>``), its pending and deferred
        recipients in unfinished campaigns become *suppressed*, and with ``report`` a
        ``recipient.unsubscribed`` event tells the main server, in one transaction.

        False when the address was already listed: a second click changes nothing (one
        suppression, one event). LedgerError for an address that cannot be suppressed."""
        kind, key = _suppression_key(address)
        c = campaigns.c
        t = recipients.c
        with self._write() as conn:
            name = conn.execute(sa.select(c.name).where(c.id == campaign_id)).scalar()
            source = f"campaign:{name}" if name is not None else f"campaign #{campaign_id}"
            inserted = conn.execute(
                suppressions.insert()
                .prefix_with(self._upsert_ignore)
                .values(kind=kind, value=key, reason="unsubscribed", source=source[:200],
                        created_at=now)
            ).rowcount  # fmt: skip
            if not inserted:
                return False
            live = [CampaignState.READY, CampaignState.RUNNING, CampaignState.PAUSED]
            for (live_id,) in conn.execute(
                sa.select(c.id).where(c.status.in_([s.value for s in live]))
            ).all():
                conn.execute(
                    recipients.update()
                    .where(
                        t.campaign_id == live_id,
                        t.email_key == key,
                        t.status.in_([R.PENDING.value, R.DEFERRED.value]),
                    )
                    .values(status=R.SUPPRESSED.value, last_reply="unsubscribed", updated_at=now)
                )
            if report:
                recipient_id = conn.execute(
                    sa.select(t.id).where(t.campaign_id == campaign_id, t.email_key == key)
                ).scalar()
                payload = {"email": address, "via": via}
                event = (
                    campaign_id if name is not None else None,
                    recipient_id,
                    "recipient.unsubscribed",
                    payload,
                )
                self._insert_events(conn, [event], now)
        return True

    @_retry_on_conflict
    def apply_suppressions(self, campaign_id: int, *, now: float) -> int:
        """Pending and deferred recipients on the suppression list become *suppressed*."""
        t = recipients.c
        s = suppressions.c
        if self.backend == "sqlite":
            domain: Any = sa.func.substr(t.email_key, sa.func.instr(t.email_key, "@") + 1)
        else:
            domain = sa.func.substring_index(t.email_key, "@", -1)
        listed = sa.or_(
            sa.exists().where(s.kind == "address", s.value == t.email_key),
            sa.exists().where(s.kind == "domain", s.value == domain),
        )
        with self._write() as conn:
            result = conn.execute(
                recipients.update()
                .where(
                    t.campaign_id == campaign_id,
                    t.status.in_([R.PENDING.value, R.DEFERRED.value]),
                    listed,
                )
                .values(
                    status=R.SUPPRESSED.value, last_reply="on the suppression list", updated_at=now
                )
            )
        return int(result.rowcount or 0)

    # -- the events outbox ---------------------------------------------------------------

    def add_events(
        self,
        items: Sequence[tuple[int | None, int | None, str, Mapping[str, Any]]],
        *,
        now: float,
    ) -> None:
        """Append (campaign_id, recipient_id, type, payload) events to the outbox."""
        if not items:
            return
        with self._write() as conn:
            self._insert_events(conn, items, now)

    @staticmethod
    def _insert_events(
        conn: Connection,
        items: Sequence[tuple[int | None, int | None, str, Mapping[str, Any]]],
        now: float,
    ) -> None:
        conn.execute(
            events.insert(),
            [
                {
                    "campaign_id": c,
                    "recipient_id": r,
                    "type": kind,
                    "payload": json.dumps(dict(payload), sort_keys=True),
                    "created_at": now,
                }
                for c, r, kind, payload in items
            ],
        )

    def undelivered_events(self, limit: int = 500) -> list[dict[str, Any]]:
        """The oldest events not yet delivered, in sequence order."""
        e = events.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(events).where(e.delivered_at.is_(None)).order_by(e.id).limit(limit)
            ).all()
        return [{**r._mapping, "payload": json.loads(r.payload)} for r in rows]

    def mark_events_delivered(self, ids: Sequence[int], *, now: float) -> int:
        if not ids:
            return 0
        with self._write() as conn:
            result = conn.execute(
                events.update()
                .where(events.c.id.in_(list(ids)), events.c.delivered_at.is_(None))
                .values(delivered_at=now)
            )
        return int(result.rowcount or 0)

    def list_agents(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(agents).order_by(agents.c.heartbeat.desc())).all()
        return [dict(r._mapping) for r in rows]

    @_retry_on_conflict
    def claim(
        self, campaign_id: int, owner: str, limit: int, *, now: float, lease_seconds: float
    ) -> list[Claimed]:
        """Lease up to ``limit`` due recipients: retries that are due first, then new ones.

        Every ``RECLAIM_EVERY`` seconds it first settles expired leases (a dead agent's), and
        every ``HEARTBEAT_EVERY`` seconds it records this agent's heartbeat.
        """
        with self._write() as conn:
            if not self._claimable(conn, campaign_id):
                return []  # paused or cancelled (`mailpacer campaign pause|cancel`)
            if now - self._last_reclaim >= RECLAIM_EVERY or now < self._last_reclaim:
                t = recipients.c
                self._settle_leases(
                    conn,
                    sa.and_(t.campaign_id == campaign_id, _LEASED, t.lease_expires < now),
                    now,
                )
                self._last_reclaim = now
            if now - self._last_heartbeat >= HEARTBEAT_EVERY or now < self._last_heartbeat:
                self._heartbeat(conn, owner, now)
                self._last_heartbeat = now
            params = {"cid": campaign_id, "now": now, "lim": limit}
            rows: list[Any] = list(self._claim_due.one(conn, params).fetchall())
            retries = len(rows)
            if len(rows) < limit:
                params["lim"] = limit - len(rows)
                rows.extend(self._claim_fresh.one(conn, params).fetchall())
            if not rows:
                return []
            self._update_ids(
                conn,
                "status=%s, lease_owner=%s, lease_expires=%s, updated_at=%s",
                (R.CLAIMED.value, owner, now + lease_seconds, now),
                [r[0] for r in rows],
            )
        return [
            Claimed(r[0], r[1], r[2], r[3], r[4], r[5], R.DEFERRED if i < retries else R.PENDING)
            for i, r in enumerate(rows)
        ]

    @staticmethod
    def _stopped(row: Any) -> bool:
        """Paused by an operator (``control``), or cancelled. A campaign a sender left
        *paused* because it stopped with work left does not stop other senders."""
        if row is None:
            return False
        status, control = row
        return bool(status == CampaignState.CANCELLED.value or control == CONTROL_PAUSE)

    def _claimable(self, conn: Connection, campaign_id: int) -> bool:
        c = campaigns.c
        row = conn.execute(sa.select(c.status, c.control).where(c.id == campaign_id)).first()
        return not self._stopped(row)

    def _campaign_of_paused(self, conn: Connection, recipient_id: int) -> bool:
        c = campaigns.c
        row = conn.execute(
            sa.select(c.status, c.control)
            .select_from(campaigns.join(recipients, recipients.c.campaign_id == c.id))
            .where(recipients.c.id == recipient_id)
        ).first()
        return self._stopped(row)

    def mark_sending(self, ids: Sequence[int], owner: str, *, now: float) -> int:
        """Write-ahead: from here on a crash leaves these recipients *uncertain*, not pending.

        Returns how many rows were marked: fewer than ``len(ids)`` means some lease was lost
        (expired and reclaimed by another agent), and 0 that the campaign was paused or
        cancelled (nothing is marked then); what was not marked must not be sent.
        """
        marked = self.mark_sending_ids(ids, owner, now=now)
        return 0 if marked is None else len(marked)

    @_retry_on_conflict
    def mark_sending_ids(self, ids: Sequence[int], owner: str, *, now: float) -> list[int] | None:
        """``mark_sending`` that says which rows: ``None`` when the campaign is paused or
        cancelled (nothing marked), else the ids marked. An id missing from the list lost its
        lease (expired and taken by another agent): it must not be sent, nor released."""
        if not ids:
            return []
        with self._write() as conn:
            if self._campaign_of_paused(conn, ids[0]):
                return None
            marked = self._update_ids(
                conn, "status=%s, updated_at=%s", (R.SENDING.value, now), ids, owner=owner
            )
            if marked == len(ids):
                return list(ids)
            p = self._placeholder
            rows = conn.exec_driver_sql(
                f"SELECT id FROM recipients WHERE id IN ({','.join([p] * len(ids))}) "
                f"AND status = {p} AND lease_owner = {p}",
                (*ids, R.SENDING.value, owner),
            ).all()
        return [int(r[0]) for r in rows]

    def _update_ids(
        self,
        conn: Connection,
        assignments: str,
        values: tuple[Any, ...],
        ids: Sequence[int],
        *,
        owner: str | None = None,
    ) -> int:
        """``UPDATE recipients SET ... WHERE id IN (...)`` without SQLAlchemy's IN expansion."""
        p = self._placeholder
        marks = ",".join([p] * len(ids))
        sql = f"UPDATE recipients SET {assignments.replace('%s', p)} WHERE id IN ({marks})"
        params: tuple[Any, ...] = (*values, *ids)
        if owner is not None:
            sql += f" AND lease_owner = {p}"
            params = (*params, owner)
        return int(conn.exec_driver_sql(sql, params).rowcount or 0)

    @_retry_on_conflict
    def release_claimed(self, campaign_id: int, owner: str) -> int:
        """Claimed rows this agent never started go back to pending (clean shutdown)."""
        t = recipients.c
        with self._write() as conn:
            result = conn.execute(
                recipients.update()
                .where(
                    t.campaign_id == campaign_id,
                    t.status == R.CLAIMED.value,
                    t.lease_owner == owner,
                )
                .values(status=R.PENDING.value, lease_owner=None, lease_expires=None)
            )
        return int(result.rowcount or 0)

    @_retry_on_conflict
    def record(
        self,
        outcomes: Iterable[Outcome],
        events_: Sequence[tuple[int | None, int | None, str, Mapping[str, Any]]] = (),
        *,
        owner: str | None = None,
    ) -> int:
        """Write a batch of outcomes in one transaction, with their outbox events if given
        (so an outcome and the event that reports it are never one without the other).
        ``owner``: only rows whose lease this agent still holds are changed."""
        now = time.time()
        params = [
            {
                "rid": o.recipient_id,
                "st": o.state.value,
                "inc": 1 if o.attempted else 0,
                "code": o.code,
                "reply": o.reply[:2000] if o.reply else o.reply,
                "nxt": o.next_attempt_at,
                "now": o.at or now,
                "sent": (o.at or now) if o.state is R.SENT else None,
                "first": (o.at or now) if o.attempted else None,
            }
            for o in outcomes
        ]
        if not params:
            return 0
        if owner is not None:
            for row in params:
                row["owner"] = owner
        with self._write() as conn:
            (self._record_many if owner is None else self._record_owned_many).run(conn, params)
            if events_:
                self._insert_events(conn, events_, now)
        return len(params)

    def next_due(self, campaign_id: int) -> float | None:
        """When the earliest deferred recipient may be retried (None: nothing deferred, or
        the campaign is paused or cancelled: nothing will be claimed)."""
        t = recipients.c
        with self.engine.connect() as conn:
            if not self._claimable(conn, campaign_id):
                return None
            value = conn.execute(
                sa.select(func.min(t.next_attempt_at)).where(
                    t.campaign_id == campaign_id,
                    sa.text(f"recipients.status = '{R.DEFERRED.value}'"),
                )
            ).scalar_one_or_none()
        return float(value) if value is not None else None

    def count_sent_since(self, campaign_id: int, since: float) -> int:
        """Messages of the campaign recorded sent at or after ``since`` (Unix time), also
        those that bounced later: what its hour and day caps used before a restart.

        No index covers ``sent_at``: one scan of the campaign's rows, once per run."""
        t = recipients.c
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(func.count()).where(t.campaign_id == campaign_id, t.sent_at >= since)
            ).scalar_one()
        return int(value)

    def first_sent_at(self, campaign_id: int) -> float | None:
        """When the campaign's first message was sent (a warm-up ramp's day 0)."""
        t = recipients.c
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(func.min(t.sent_at)).where(t.campaign_id == campaign_id)
            ).scalar_one_or_none()
        return float(value) if value is not None else None

    def remaining_by_domain(self, campaign_id: int) -> dict[str, int]:
        """Recipients still to send (pending, claimed, sending, deferred) per domain, for
        an ETA per domain group. One grouped scan of the campaign, once per run."""
        t = recipients.c
        domain = func.lower(func.substr(t.email, func.instr(t.email, "@") + 1))
        todo = [R.PENDING.value, R.CLAIMED.value, R.SENDING.value, R.DEFERRED.value]
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(domain, func.count())
                .where(t.campaign_id == campaign_id, t.status.in_(todo))
                .group_by(domain)
            ).all()
        return {str(d): int(n) for d, n in rows}

    def recipients_in(
        self, campaign_id: int, states: Sequence[str], limit: int = 100
    ) -> list[dict[str, Any]]:
        t = recipients.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.id, t.email, t.status, t.attempts, t.last_code, t.last_reply)
                .where(t.campaign_id == campaign_id, t.status.in_(list(states)))
                .order_by(t.id)
                .limit(limit)
            ).all()
        return [dict(r._mapping) for r in rows]

    # -- suppressions: listing and removal (the control API) ---------------------------------

    def list_suppressions(
        self, *, after: int = 0, limit: int = 100, kind: str | None = None
    ) -> list[dict[str, Any]]:
        """Suppressions in the order they were added, ``limit`` at a time: the page after
        the one whose last ``id`` was ``after`` (keyset paging: stable while rows are added).
        ``kind``: only ``address`` or only ``domain`` entries."""
        s = suppressions.c
        conditions = [s.id > after]
        if kind is not None:
            conditions.append(s.kind == kind)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(s.id, s.kind, s.value, s.reason, s.source, s.created_at)
                .where(*conditions)
                .order_by(s.id)
                .limit(limit)
            ).all()
        return [dict(r._mapping) for r in rows]

    def count_suppressions(self, *, kind: str | None = None) -> int:
        s = suppressions.c
        query = sa.select(func.count()).select_from(suppressions)
        if kind is not None:
            query = query.where(s.kind == kind)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def find_suppression(self, value: str) -> dict[str, Any] | None:
        """The entry for an address (``a@b``, any case) or a domain (``b``), if listed."""
        kind, key = _suppression_key(value)
        s = suppressions.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(s.id, s.kind, s.value, s.reason, s.source, s.created_at).where(
                    s.kind == kind, s.value == key
                )
            ).first()
        return dict(row._mapping) if row is not None else None

    def remove_suppression(self, value: str) -> bool:
        """Take an address or a domain off the suppression list; False if it was not there.
        Recipients already marked *suppressed* stay suppressed."""
        kind, key = _suppression_key(value)
        s = suppressions.c
        with self._write() as conn:
            deleted = conn.execute(
                suppressions.delete().where(s.kind == kind, s.value == key)
            ).rowcount
        return bool(deleted)

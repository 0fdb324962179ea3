"""The ledger: every recipient's fate, durable, on SQLite or MySQL/MariaDB.

All methods are blocking (DB-API drivers are); the agent calls them through
:class:`mailpacer.ledger.AsyncLedger`, which runs them in worker threads under a
capacity limiter no larger than the connection pool.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import bindparam, event, func
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from mailpacer.ledger.schema import SCHEMA_VERSION, campaigns, metadata, recipients, schema_info
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


class LedgerError(Exception):
    """The ledger cannot be opened or used; the message is meant for the operator."""


def mask_url(url: str | URL) -> str:
    """The database URL with its password hidden."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
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
    cursor = dbapi_connection.cursor()
    # WAL: readers (status, HTTP) never block the writer; NORMAL: no fsync per commit,
    # still safe against a process crash (the test kills the process, not the machine).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class Ledger:
    """Blocking access to the ledger database."""

    def __init__(self, url: str, *, pool_size: int = 5, connect_timeout: float = 5.0) -> None:
        self.url_text = mask_url(url)
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise LedgerError(
                f"invalid database URL {url!r}: expected e.g. sqlite:///./mailpacer.db "
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
            kwargs.update(
                pool_size=pool_size,
                max_overflow=0,
                pool_timeout=connect_timeout,
                pool_recycle=3600,
                connect_args={
                    "connect_timeout": int(max(1, connect_timeout)),
                    "read_timeout": 30,
                    "write_timeout": 30,
                    "charset": "utf8mb4",
                },
            )
        try:
            self.engine: Engine = sa.create_engine(parsed, **kwargs)
        except (NoSuchModuleError, ArgumentError, ImportError) as exc:
            raise LedgerError(f"cannot use database {self.url_text!r}: {exc}") from None
        if self.backend == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
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
            due = due.with_for_update(skip_locked=True)
            fresh = fresh.with_for_update(skip_locked=True)
        self._claim_due = _Prepared(due, dialect)
        self._claim_fresh = _Prepared(fresh, dialect)
        self._record_many = _Prepared(self._record_stmt, dialect)
        self._insert_many = _Prepared(
            self._insert_stmt.values({c: bindparam(c) for c in columns}), dialect
        )

    def _describe(self, exc: BaseException) -> str:
        original = getattr(exc, "orig", None) or exc
        return f"{type(original).__name__}: {original}"

    def check(self) -> None:
        """Open one connection, or raise LedgerError with what went wrong."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except (DBAPIError, SQLAlchemyError) as exc:
            raise LedgerError(
                f"cannot open the ledger {self.url_text}: {self._describe(exc)}"
            ) from None

    def upgrade(self) -> int:
        """Create or upgrade the schema; return the version now in place."""
        try:
            with self.engine.begin() as conn:
                metadata.create_all(conn)
                row = conn.execute(sa.select(schema_info.c.version)).first()
                if row is None:
                    conn.execute(
                        schema_info.insert().values(
                            id=1, version=SCHEMA_VERSION, applied_at=time.time()
                        )
                    )
                    return SCHEMA_VERSION
                version = int(row[0])
        except (DBAPIError, SQLAlchemyError) as exc:
            raise LedgerError(
                f"cannot prepare the ledger {self.url_text}: {self._describe(exc)}"
            ) from None
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"the ledger {self.url_text} has schema version {version}, newer than this "
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
        now = time.time()
        with self.engine.begin() as conn:
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
        campaign = self.campaign_by_name(name)
        assert campaign is not None
        return campaign

    def update_campaign(self, campaign_id: int, **values: Any) -> None:
        if "settings" in values:
            values["settings"] = json.dumps(values["settings"], sort_keys=True)
        values["updated_at"] = time.time()
        with self.engine.begin() as conn:
            conn.execute(campaigns.update().where(campaigns.c.id == campaign_id).values(**values))

    # -- recipients --------------------------------------------------------------

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
        with self.engine.begin() as conn:
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

    def recover(
        self, campaign_id: int, owner: str | None, now: float | None = None
    ) -> dict[str, int]:
        """Settle what a stopped or crashed agent left behind.

        Claimed rows (never on the wire) go back to pending. Rows in *sending* may have
        reached the relay: they become *uncertain* and are never resent silently.
        ``owner=None`` takes every row (SQLite: we hold the only lock); otherwise only
        this owner's rows and rows whose lease has expired.
        """
        now = time.time() if now is None else now
        t = recipients.c
        scope = [t.campaign_id == campaign_id]
        if owner is not None:
            scope.append(sa.or_(t.lease_owner == owner, t.lease_expires < now))
        with self.engine.begin() as conn:
            released = conn.execute(
                recipients.update()
                .where(t.status == R.CLAIMED.value, *scope)
                .values(
                    status=R.PENDING.value, lease_owner=None, lease_expires=None, updated_at=now
                )
            ).rowcount
            uncertain = conn.execute(
                recipients.update()
                .where(t.status == R.SENDING.value, *scope)
                .values(
                    status=R.UNCERTAIN.value,
                    lease_owner=None,
                    lease_expires=None,
                    updated_at=now,
                    last_reply=sa.func.coalesce(t.last_reply, "")
                    + " [agent stopped after handing the message to the relay; "
                    "delivery unknown]",
                )
            ).rowcount
        return {"released": int(released or 0), "uncertain": int(uncertain or 0)}

    def claim(
        self, campaign_id: int, owner: str, limit: int, *, now: float, lease_seconds: float
    ) -> list[Claimed]:
        """Lease up to ``limit`` due recipients: retries that are due first, then new ones."""
        with self.engine.begin() as conn:
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

    def mark_sending(self, ids: Sequence[int], owner: str, *, now: float) -> None:
        """Write-ahead: from here on a crash leaves these recipients *uncertain*, not pending."""
        if not ids:
            return
        with self.engine.begin() as conn:
            self._update_ids(
                conn,
                "status=%s, updated_at=%s",
                (R.SENDING.value, now),
                ids,
                owner=owner,
            )

    def _update_ids(
        self,
        conn: Connection,
        assignments: str,
        values: tuple[Any, ...],
        ids: Sequence[int],
        *,
        owner: str | None = None,
    ) -> None:
        """``UPDATE recipients SET ... WHERE id IN (...)`` without SQLAlchemy's IN expansion."""
        p = self._placeholder
        marks = ",".join([p] * len(ids))
        sql = f"UPDATE recipients SET {assignments.replace('%s', p)} WHERE id IN ({marks})"
        params: tuple[Any, ...] = (*values, *ids)
        if owner is not None:
            sql += f" AND lease_owner = {p}"
            params = (*params, owner)
        conn.exec_driver_sql(sql, params)

    def release_claimed(self, campaign_id: int, owner: str) -> int:
        """Claimed rows this agent never started go back to pending (clean shutdown)."""
        t = recipients.c
        with self.engine.begin() as conn:
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

    def record(self, outcomes: Iterable[Outcome]) -> int:
        """Write a batch of outcomes in one transaction."""
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
        with self.engine.begin() as conn:
            self._record_many.run(conn, params)
        return len(params)

    def next_due(self, campaign_id: int) -> float | None:
        """When the earliest deferred recipient may be retried (None: nothing deferred)."""
        t = recipients.c
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(func.min(t.next_attempt_at)).where(
                    t.campaign_id == campaign_id,
                    sa.text(f"recipients.status = '{R.DEFERRED.value}'"),
                )
            ).scalar_one_or_none()
        return float(value) if value is not None else None

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

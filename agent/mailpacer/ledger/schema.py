"""The ledger's tables (SQLAlchemy Core): one schema for SQLite and MySQL/MariaDB.

Times are UNIX epoch seconds (floats): the same on both backends, cheap to compare,
and free of time-zone surprises.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect

__all__ = [
    "agents",
    "campaigns",
    "events",
    "metadata",
    "recipients",
    "schema_info",
    "suppressions",
]

metadata = MetaData()

# SQLite only auto-increments INTEGER PRIMARY KEY; MySQL gets BIGINT.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

schema_info = Table(
    "mailpacer_schema",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
    Column("applied_at", Double, nullable=False),
)

campaigns = Table(
    "campaigns",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("sender", String(320), nullable=False),
    Column("template_dir", Text, nullable=False),
    Column("source", Text, nullable=True),  # where the recipients came from
    Column("source_fingerprint", String(64), nullable=True),
    Column("settings", Text, nullable=False),  # JSON
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("finished_at", Double, nullable=True),
    Column("note", Text, nullable=True),
    Column("control", String(16), nullable=True),  # v3: 'pause' = paused by an operator
    mysql_charset="utf8mb4",
)

recipients = Table(
    "recipients",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("campaign_id", Integer, ForeignKey("campaigns.id"), nullable=False),
    Column("email", String(320), nullable=False),
    Column("email_key", String(320), nullable=False),
    Column("source_row", Integer, nullable=True),
    Column("variables", Text, nullable=False),  # JSON object of template variables
    Column("status", String(12), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Double, nullable=False, default=0.0),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires", Double, nullable=True),
    Column("last_code", Integer, nullable=True),
    Column("last_reply", Text, nullable=True),
    Column("first_attempt_at", Double, nullable=True),
    Column("updated_at", Double, nullable=False),
    Column("sent_at", Double, nullable=True),
    UniqueConstraint("campaign_id", "email_key", name="uq_recipients_campaign_email"),
    mysql_charset="utf8mb4",
)

# Schema version 2 ------------------------------------------------------------------------

suppressions = Table(
    "suppressions",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("kind", String(8), nullable=False),  # 'address' or 'domain'
    Column("value", String(320), nullable=False),  # the address's dedup key, or the domain
    Column("reason", Text, nullable=True),
    Column("source", String(200), nullable=True),  # e.g. 'bounce', 'complaint', 'import:x.csv'
    Column("created_at", Double, nullable=False),
    UniqueConstraint("kind", "value", name="uq_suppressions_kind_value"),
    mysql_charset="utf8mb4",
)

# The outbox: what happened, in order, for delivery to the main server (issue 5).
events = Table(
    "events",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),  # the monotonic sequence
    Column("campaign_id", Integer, ForeignKey("campaigns.id"), nullable=True),
    Column("recipient_id", _BigId, nullable=True),
    Column("type", String(32), nullable=False),
    Column("payload", Text, nullable=False),  # JSON
    Column("created_at", Double, nullable=False),
    Column("delivered_at", Double, nullable=True),
    Index("ix_events_undelivered", "delivered_at", "id"),
    mysql_charset="utf8mb4",
)

agents = Table(
    "agents",
    metadata,
    Column("id", String(64), primary_key=True),  # the lease owner, "host:pid"
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=True),
    Column("started_at", Double, nullable=False),
    Column("heartbeat", Double, nullable=False),
    mysql_charset="utf8mb4",
)


def _not_sqlite(
    ddl: Any,
    target: Any,
    bind: Any,
    tables: Any = None,
    state: Any = None,
    *,
    dialect: Dialect,
    compiler: Any = None,
    checkfirst: bool = False,
) -> bool:
    return bool(dialect.name != "sqlite")


# Claiming never sorts: pending rows come in id order, due deferred rows in
# next_attempt_at order, both as index range scans. On SQLite the indexes are partial
# (only pending / only deferred rows), so a recipient's later state changes (claimed ->
# sending -> sent) touch no index at all; MariaDB has no partial indexes.
Index(
    "ix_recipients_pending",
    recipients.c.campaign_id,
    recipients.c.id,
    sqlite_where=text("status = 'pending'"),
).ddl_if(dialect="sqlite")
Index(
    "ix_recipients_deferred",
    recipients.c.campaign_id,
    recipients.c.next_attempt_at,
    sqlite_where=text("status = 'deferred'"),
).ddl_if(dialect="sqlite")
Index(
    "ix_recipients_state_id", recipients.c.campaign_id, recipients.c.status, recipients.c.id
).ddl_if(callable_=_not_sqlite)
Index(
    "ix_recipients_state_due",
    recipients.c.campaign_id,
    recipients.c.status,
    recipients.c.next_attempt_at,
).ddl_if(callable_=_not_sqlite)

# Leases in force, for reclaiming those of dead agents (v2). Only claimed/sending rows are
# in it on SQLite, so it stays as small as the work in flight.
ix_recipients_leased = Index(
    "ix_recipients_leased",
    recipients.c.campaign_id,
    recipients.c.lease_expires,
    sqlite_where=text("status IN ('claimed', 'sending')"),
).ddl_if(dialect="sqlite")

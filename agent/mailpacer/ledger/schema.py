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

__all__ = ["SCHEMA_VERSION", "campaigns", "metadata", "recipients", "schema_info"]

SCHEMA_VERSION = 1

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

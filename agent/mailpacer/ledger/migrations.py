"""Versioned schema migrations: an ordered list of functions, the version in ``mailpacer_schema``.

Why not Alembic: the ledger has a handful of tables, ships inside the agent and is upgraded
by the agent itself (``mailpacer db upgrade``, and on start of ``send``/``run``) on SQLite and
MariaDB alike. Alembic would add a migration environment, a script directory and its own
version table to every install for what is here a list of idempotent functions. Each
migration runs in its own transaction and bumps the version in the same one; on SQLite DDL
is transactional, so a crash mid-migration leaves the previous version. MariaDB commits DDL
implicitly, so every migration is written to be re-runnable (``checkfirst``) and a crash
between its DDL and the version bump just runs it again. Two processes upgrading at once
are serialised: SQLite by ``BEGIN IMMEDIATE``, MariaDB by ``GET_LOCK``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mailpacer.ledger.schema import (
    agents,
    campaigns,
    events,
    ix_recipients_leased,
    metadata,
    recipients,
    schema_info,
    suppressions,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "current_version", "migrate"]


def _v1_campaigns_and_recipients(conn: Connection) -> None:
    metadata.create_all(conn, tables=[campaigns, recipients], checkfirst=True)


def _v2_suppressions_events_agents(conn: Connection) -> None:
    metadata.create_all(conn, tables=[suppressions, events, agents], checkfirst=True)
    if conn.dialect.name == "sqlite":
        ix_recipients_leased.create(conn, checkfirst=True)


def _v3_campaign_control(conn: Connection) -> None:
    columns = {c["name"] for c in sa.inspect(conn).get_columns("campaigns")}
    if "control" not in columns:
        conn.execute(sa.text("ALTER TABLE campaigns ADD COLUMN control VARCHAR(16) NULL"))


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "campaigns and recipients", _v1_campaigns_and_recipients),
    (2, "suppressions, events outbox, agents; index of leases", _v2_suppressions_events_agents),
    (3, "campaigns.control (an operator's pause)", _v3_campaign_control),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def current_version(conn: Connection) -> int | None:
    """The version in place, or None for an empty database."""
    if not sa.inspect(conn).has_table(schema_info.name):
        return None
    value = conn.execute(sa.select(schema_info.c.version)).scalar_one_or_none()
    return None if value is None else int(value)


def migrate(
    conn: Connection, target: int = SCHEMA_VERSION, *, on_step: Callable[[int, str], None] | None
) -> tuple[int, int]:
    """Apply the missing migrations up to ``target``; return (version before, version after).

    ``conn`` must not be in a transaction: each migration gets its own.
    """
    with conn.begin():
        schema_info.create(conn, checkfirst=True)
        before = current_version(conn) or 0
    if before > SCHEMA_VERSION:
        return before, before  # the caller refuses it
    version = before
    for number, description, step in MIGRATIONS:
        if number <= version or number > target:
            continue
        with conn.begin():
            version = current_version(conn) or 0  # another process may have been first
            if number <= version:
                continue
            step(conn)
            if version == 0:
                conn.execute(
                    schema_info.insert().values(id=1, version=number, applied_at=time.time())
                )
            else:
                conn.execute(schema_info.update().values(version=number, applied_at=time.time()))
        version = number
        if on_step is not None:
            on_step(number, description)
    return before, version

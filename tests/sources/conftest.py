"""A throw-away CRM database on the machine's MariaDB (127.0.0.1:3306, root, no password).

Each fixture use creates ``mp_crm_<random>`` and drops it afterwards. When the server is
unreachable the tests are skipped with the reason, unless MAILPACER_REQUIRE_MARIADB=1 (set
by ``make test``): then they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

HOST, PORT, USER = "127.0.0.1", 3306, "root"
SERVER_URL = f"mysql+pymysql://{USER}@{HOST}:{PORT}"


def admin_connection(database: str | None = None) -> Any:
    import pymysql

    try:
        return pymysql.connect(
            host=HOST, port=PORT, user=USER, database=database, autocommit=True, connect_timeout=3
        )
    except pymysql.MySQLError as exc:
        reason = f"MariaDB on {HOST}:{PORT} is unreachable ({exc})"
        if os.environ.get("MAILPACER_REQUIRE_MARIADB") == "1":
            pytest.fail(f"{reason}; MAILPACER_REQUIRE_MARIADB=1 requires it")
        pytest.skip(f"{reason}; start it or set MAILPACER_REQUIRE_MARIADB=1 to make this fail")


@dataclass
class Crm:
    name: str
    url: str
    admin: Any  # a pymysql connection to the CRM database, autocommit

    def execute(self, sql: str, args: Any = None) -> Any:
        with self.admin.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with self.admin.cursor() as cur:
            cur.executemany(sql, rows)


@pytest.fixture
def crm() -> Iterator[Crm]:
    server = admin_connection()
    name = f"mp_crm_{secrets.token_hex(6)}"
    with server.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        admin = admin_connection(name)
        try:
            yield Crm(name, f"{SERVER_URL}/{name}", admin)
        finally:
            admin.close()
    finally:
        with server.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        server.close()


def customers_table(crm: Crm, count: int = 10_000) -> dict[str, list[int]]:
    """``customers`` with ``count`` rows in id order; returns the ids of the special rows.

    Every 250th row (id % 250 == 7) has an invalid address, every 100th (id % 100 == 50) a
    case-variant duplicate of an earlier address, id 3 an IDNA domain, id 4 a NULL email,
    id 5 Latin-1 bytes in ``note`` (invalid UTF-8).
    """
    crm.execute(
        "CREATE TABLE customers (id INT PRIMARY KEY, email VARCHAR(320) NULL, "
        "first_name VARCHAR(100), city VARCHAR(100), points INT, signup DATE, "
        "note VARBINARY(200) NULL, active TINYINT NOT NULL DEFAULT 1) CHARACTER SET utf8mb4"
    )
    special: dict[str, list[int]] = {"bad": [], "duplicate": [], "null": [4], "latin1": [5]}
    rows: list[tuple[Any, ...]] = []
    for i in range(1, count + 1):
        email: str | None = f"customer{i}@example.org"
        note: bytes | None = None
        if i % 250 == 7:
            email = f"broken-{i}.example.org"
            special["bad"].append(i)
        elif i % 100 == 50:
            email = f"CUSTOMER{i - 40}@EXAMPLE.ORG"
            special["duplicate"].append(i)
        elif i == 3:
            email = "anna@bücher.example"
        elif i == 4:
            email = None
        elif i == 5:
            note = b"J\xf6rg"
        rows.append((i, email, f"Name{i}", "Zürich", i * 10, "2024-02-29", note))
    crm.executemany(
        "INSERT INTO customers (id, email, first_name, city, points, signup, note) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        rows,
    )
    return special

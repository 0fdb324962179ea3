"""Ledger databases for tests: a SQLite file, or a throw-away MariaDB database.

MariaDB tests use the machine's server on 127.0.0.1:3306 (root, no password; another with
``MAILPACER_TEST_MARIADB=mysql+pymysql://user:pw@host:port``). Each test
gets its own database ``mp_test_<random>``, dropped afterwards. When the server is
unreachable the test is skipped with the reason, unless ``MAILPACER_REQUIRE_MARIADB=1``
(set by ``make test``): then it fails.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "BACKENDS",
    "MARIADB_SERVER",
    "database_url",
    "ledger_on_each_backend",
    "mariadb_database",
    "require_mariadb",
]

MARIADB_SERVER = os.environ.get("MAILPACER_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306")
BACKENDS = ("sqlite", "mariadb")


def _admin() -> Any:
    import pymysql
    from sqlalchemy.engine import make_url

    server = make_url(MARIADB_SERVER)
    return pymysql.connect(
        host=server.host or "127.0.0.1",
        port=server.port or 3306,
        user=server.username or "root",
        password=server.password or "",
        connect_timeout=3,
        autocommit=True,
    )


def require_mariadb() -> None:
    """Skip (or fail, under MAILPACER_REQUIRE_MARIADB=1) when MariaDB cannot be reached."""
    import pymysql

    try:
        _admin().close()
    except pymysql.MySQLError as exc:
        reason = f"MariaDB at {MARIADB_SERVER.split('@')[-1]} is unreachable ({exc})"
        if os.environ.get("MAILPACER_REQUIRE_MARIADB") == "1":
            pytest.fail(f"{reason}; MAILPACER_REQUIRE_MARIADB=1 requires it")
        pytest.skip(f"{reason}; start it or set MAILPACER_REQUIRE_MARIADB=1 to make this fail")


@contextmanager
def mariadb_database() -> Iterator[str]:
    """Create ``mp_test_<random>``, yield its URL, drop it."""
    require_mariadb()
    name = f"mp_test_{secrets.token_hex(6)}"
    admin = _admin()
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        yield f"{MARIADB_SERVER}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@contextmanager
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        with mariadb_database() as url:
            yield url


@pytest.fixture(params=BACKENDS)
def ledger_on_each_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """An upgraded ledger, once on SQLite and once on MariaDB (import it as a fixture)."""
    from mailpacer.ledger import Ledger

    with database_url(request.param, tmp_path) as url:
        db = Ledger(url)
        db.upgrade()
        yield db
        db.dispose()

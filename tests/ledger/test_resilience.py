"""The ledger when the database is unreachable, frozen or misconfigured: fast, clear failures.

A "frozen" server is a TCP listener that never accepts or greets (what a SIGSTOPped or
wedged mariadbd looks like to a client): without care pymysql would wait its read timeout
(30 s) for the greeting.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from mailpacer.ledger import Ledger, LedgerError

from .backends import mariadb_database

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def frozen_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(50)  # the kernel completes handshakes; nobody ever answers
        yield listener.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_refused_connection_is_retried_briefly_then_reported(closed_port: int) -> None:
    db = Ledger(f"mysql+pymysql://mp:s3cr3t@127.0.0.1:{closed_port}/x")
    started = time.monotonic()
    with pytest.raises(LedgerError) as info:
        db.check()
    elapsed = time.monotonic() - started
    db.dispose()
    assert 0.5 < elapsed < 3.0  # 3 attempts with backoff (0.25 s, 0.5 s, +-20 %)
    message = str(info.value)
    assert f"cannot open the ledger mysql+pymysql://mp:***@127.0.0.1:{closed_port}/x" in message
    assert "Connection refused" in message
    assert "s3cr3t" not in message


def test_frozen_server_fails_within_the_connect_timeout(frozen_port: int) -> None:
    db = Ledger(f"mysql+pymysql://mp@127.0.0.1:{frozen_port}/x")
    started = time.monotonic()
    with pytest.raises(LedgerError, match="no answer within 5 s") as info:
        db.check()
    elapsed = time.monotonic() - started
    db.dispose()
    assert 4.5 < elapsed < 6.5, elapsed
    assert "timed out" in str(info.value)


def test_send_on_a_frozen_database_exits_2_in_about_5_s(tmp_path: Path, frozen_port: int) -> None:
    (tmp_path / "list.csv").write_text("email\na@example.com\n", encoding="utf-8")
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mailpacer",
            "send",
            "--recipients",
            str(tmp_path / "list.csv"),
            "--template",
            str(REPO / "templates" / "welcome"),
            "--from",
            "n@example.com",
            "--relay",
            "smtp://127.0.0.1:1",
            "--db",
            f"mysql+pymysql://mp:s3cr3t@127.0.0.1:{frozen_port}/x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: cannot open the ledger"), done.stderr
    assert done.stderr.count("\n") == 1
    assert "no answer within 5 s" in done.stderr
    assert "Traceback" not in done.stderr
    assert "s3cr3t" not in done.stderr
    assert elapsed < 9.0, elapsed  # 5 s + interpreter start-up


@pytest.mark.parametrize("value", ["0", "21", "many"])
def test_pool_size_out_of_range_is_refused(value: str) -> None:
    with pytest.raises(LedgerError, match="must be a number from 1 to 20"):
        Ledger(f"mysql+pymysql://u:pw@127.0.0.1/x?pool_size={value}")


def test_pool_size_from_the_url_and_pre_ping() -> None:
    with mariadb_database() as url:
        db = Ledger(f"{url}?pool_size=3")
        try:
            assert db.engine.pool.size() == 3  # type: ignore[attr-defined]
            assert db.engine.pool._pre_ping
            db.check()
            assert db.upgrade() >= 2
            # a connection the server killed is replaced transparently (pre-ping)
            with db.engine.connect() as conn:
                thread_id = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
            admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
            with admin.cursor() as cur:
                cur.execute(f"KILL {int(str(thread_id))}")
            admin.close()
            assert db.list_campaigns() == []
        finally:
            db.dispose()
        assert Ledger(url).engine.pool.size() == 10  # type: ignore[attr-defined]


def test_wrong_password_is_not_retried_and_names_no_password() -> None:
    with mariadb_database() as url:
        server = url.rsplit("/", 1)[0].replace("root@", "mp_nobody:wr0ng@")
        db = Ledger(f"{server}/x")
        started = time.monotonic()
        with pytest.raises(LedgerError, match="Access denied") as info:
            db.check()
        db.dispose()
        assert time.monotonic() - started < 1.0
        assert "wr0ng" not in str(info.value)

"""The SQL recipient source against the machine's MariaDB, imported into a real SQLite ledger."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailpacer.ledger import Ledger
from mailpacer.ledger.schema import recipients
from mailpacer.sources import RecipientSourceError, RejectedRow, SourceRow, import_rows
from mailpacer.sources.sql import SqlRecipients

from .conftest import HOST, PORT, USER, Crm, admin_connection, customers_table

pytestmark = pytest.mark.mariadb

QUERY = "SELECT email, first_name, city, points, signup, note FROM customers ORDER BY id"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    db = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    db.upgrade()
    yield db
    db.dispose()


def split(rows: object) -> tuple[list[SourceRow], list[RejectedRow]]:
    good: list[SourceRow] = []
    bad: list[RejectedRow] = []
    for row in rows:  # type: ignore[attr-defined]
        (good if isinstance(row, SourceRow) else bad).append(row)
    return good, bad


def error_of(url: str, query: str = "SELECT 1 AS email") -> str:
    with pytest.raises(RecipientSourceError) as info:
        SqlRecipients(url, query)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- a real table of 10,000 customers ------------------------------------------------------


def test_10k_customers_imported_with_bad_rows_reported_by_result_row(
    crm: Crm, ledger: Ledger
) -> None:
    special = customers_table(crm)
    source = SqlRecipients(crm.url, QUERY + ";  ")
    assert source.columns == ["email", "first_name", "city", "points", "signup", "note"]
    assert source.unit == "row"
    campaign = ledger.create_campaign("crm", sender="n@example.com", template_dir="/t", settings={})
    report = import_rows(ledger, campaign.id, source, batch_size=1000)
    bad = len(special["bad"]) + 2  # + the NULL email, + the Latin-1 note
    assert report.rows == 10_000
    assert report.rejected == bad
    assert report.duplicates == len(special["duplicate"])
    assert report.imported == 10_000 - bad - len(special["duplicate"])
    assert ledger.count_recipients(campaign.id) == report.imported
    reasons = {r.line: r.reason for r in report.rejected_samples}
    # ORDER BY id: the row number in the result set is the id
    assert sorted(reasons) == sorted([*special["bad"], 4, 5])
    assert reasons[7].startswith("invalid address:")
    assert "exactly one @" in reasons[7]
    assert reasons[4] == "invalid address: empty address"
    assert reasons[5] == "invalid UTF-8"
    with ledger.engine.connect() as conn:
        rows = {
            r.source_row: r
            for r in conn.execute(
                sa.select(recipients).where(recipients.c.source_row.in_([1, 3, 10, 50]))
            )
        }
    assert set(rows) == {1, 3, 10}  # 50 duplicates 10: the first occurrence is kept
    assert rows[3].email == "anna@xn--bcher-kva.example"
    assert json.loads(rows[1].variables) == {
        "email": "customer1@example.org",
        "first_name": "Name1",
        "city": "Zürich",
        "points": "10",
        "signup": "2024-02-29",
        "note": "",
    }


def test_column_names_become_variables_and_email_is_found_in_any_case(crm: Crm) -> None:
    customers_table(crm, 20)
    source = SqlRecipients(
        crm.url,
        "SELECT CONCAT(first_name, '!') AS greeting, email AS EMail -- trailing comment\n"
        "FROM customers WHERE id IN (1, 2) ORDER BY id DESC",
    )
    assert source.columns == ["greeting", "email"]
    good, bad = split(source)
    assert bad == []
    assert [(r.line, r.variables) for r in good] == [
        (1, {"greeting": "Name2!", "email": "customer2@example.org"}),
        (2, {"greeting": "Name1!", "email": "customer1@example.org"}),
    ]


def test_empty_result_has_no_rows(crm: Crm) -> None:
    customers_table(crm, 5)
    assert list(SqlRecipients(crm.url, "SELECT email FROM customers WHERE id < 0")) == []


def test_oversized_row_is_rejected(crm: Crm) -> None:
    customers_table(crm, 2)
    good, bad = split(
        SqlRecipients(crm.url, "SELECT email, REPEAT('x', 70000) AS padding FROM customers")
    )
    assert good == []
    assert [r.reason for r in bad] == ["row larger than 65536 bytes"] * 2


def test_the_result_is_streamed_not_buffered(crm: Crm) -> None:
    """After one row of a 1,000,000-row result the query is still running on the server,
    and dropping the iteration there returns at once (nothing is drained)."""
    customers_table(crm, 1000)
    query = "SELECT c.email, s.seq FROM customers c JOIN seq_1_to_1000 s /* mp-stream */"
    rows = iter(SqlRecipients(crm.url, query))
    first = next(rows)
    assert isinstance(first, SourceRow)
    running = crm.execute(
        "SELECT command, info FROM information_schema.processlist "
        "WHERE info LIKE %s AND info NOT LIKE %s",
        ("%mp-stream%", "%processlist%"),
    )
    assert [r[0] for r in running] == ["Query"]
    started = time.monotonic()
    rows.close()  # type: ignore[attr-defined]
    assert time.monotonic() - started < 2


# -- a query that fails: one line, no password -------------------------------------------


def test_query_must_name_an_email_column(crm: Crm) -> None:
    customers_table(crm, 2)
    message = error_of(crm.url, "SELECT first_name, city FROM customers")
    assert "no 'email' column in the query's columns (found: first_name, city)" in message


def test_duplicate_column_names_are_refused(crm: Crm) -> None:
    customers_table(crm, 2)
    message = error_of(crm.url, "SELECT email, city AS Email FROM customers")
    assert "Duplicate column name" in message


def test_syntax_error(crm: Crm) -> None:
    message = error_of(crm.url, "SELEC email FROM customers")
    assert message.startswith(f"CRM query on {crm.url} failed: You have an error in your SQL")
    assert "(MySQL error 1064)" in message
    assert message.endswith("the query must be one SELECT statement")


def test_unknown_table(crm: Crm) -> None:
    message = error_of(crm.url, "SELECT email FROM nope")
    assert f"Table '{crm.name}.nope' doesn't exist (MySQL error 1146)" in message


@pytest.mark.parametrize(
    "statement",
    ["DELETE FROM customers", "UPDATE customers SET email = NULL", "DROP TABLE customers"],
)
def test_only_a_select_runs_and_changes_nothing(crm: Crm, statement: str) -> None:
    customers_table(crm, 10)
    message = error_of(crm.url, statement)
    assert "the query must be one SELECT statement" in message
    assert crm.execute("SELECT COUNT(*), COUNT(email) FROM customers") == (
        (10, 9),
    )  # id 4 has none


def test_two_statements_are_refused(crm: Crm) -> None:
    customers_table(crm, 3)
    error_of(crm.url, "SELECT email FROM customers; DELETE FROM customers")
    assert crm.execute("SELECT COUNT(*) FROM customers") == ((3,),)


def test_wrong_password_is_never_printed(crm: Crm) -> None:
    url = f"mysql+pymysql://{USER}:S3cret-pw%40x@{HOST}:{PORT}/{crm.name}"
    message = error_of(url)
    assert "Access denied" in message
    assert "(MySQL error 1045)" in message
    assert "S3cret" not in message
    assert f"mysql+pymysql://{USER}:***@{HOST}:{PORT}/{crm.name}" in message


def test_unknown_database(crm: Crm) -> None:
    message = error_of(f"mysql+pymysql://{USER}@{HOST}:{PORT}/{crm.name}_missing")
    assert "Unknown database" in message


def test_unreachable_server_fails_fast() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    message = error_of(f"mysql+pymysql://u:hunter2@127.0.0.1:{port}/crm")
    assert time.monotonic() - started < 10
    assert message.startswith(
        f"cannot connect to the CRM database mysql+pymysql://u:***@127.0.0.1:{port}/crm:"
    )
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "mysql+pymysql://u:pw@host:notaport/crm",
            "invalid CRM database URL 'mysql+pymysql://u:***@host:notaport/crm'",
        ),
        ("not a url", "invalid CRM database URL 'not a url'"),
        ("postgresql://u:pw@host/crm", "unsupported CRM database 'postgresql://u:***@host/crm'"),
        ("mysql+pymysql://u:pw@host", "names no database"),
        ("mysql+pymysql://u:pw@host/crm?ssl=1", "unknown option(s) ssl"),
    ],
)
def test_bad_urls(url: str, expected: str) -> None:
    message = error_of(url)
    assert expected in message
    assert "pw" not in message.replace("pymysql", "")


def test_empty_query() -> None:
    assert "--query is empty" in error_of("mysql+pymysql://u@127.0.0.1/crm", " ; ")


def test_connection_lost_mid_stream_is_one_line_with_the_row_count(crm: Crm) -> None:
    customers_table(crm, 1000)
    query = "SELECT c.email, s.seq FROM customers c JOIN seq_1_to_1000 s /* mp-kill */"
    rows = iter(SqlRecipients(crm.url, query))
    for _ in range(5000):
        next(rows)
    (ident,) = crm.execute(
        "SELECT id FROM information_schema.processlist WHERE info LIKE %s AND info NOT LIKE %s",
        ("%mp-kill%", "%processlist%"),
    )[0]
    killer = admin_connection()
    threading.Thread(target=lambda: killer.cursor().execute(f"KILL {int(ident)}")).start()
    with pytest.raises(RecipientSourceError) as info:
        for _ in rows:
            pass
    killer.close()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"CRM query on {crm.url} failed after ")
    assert "rows:" in message

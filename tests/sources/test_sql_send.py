"""`mailpacer send --recipients-sql URL --query SQL` as an operator runs it: real processes,
the machine's MariaDB as the CRM, Postfix's smtp-sink as the relay."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..servers.smtp_sink import running_smtp_sink
from .conftest import HOST, PORT, USER, Crm, customers_table

pytestmark = pytest.mark.mariadb

QUERY = "SELECT email, first_name, points FROM customers WHERE active = 1 ORDER BY id"


def mailpacer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailpacer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def template(tmp_path: Path) -> Path:
    directory = tmp_path / "template"
    directory.mkdir()
    (directory / "subject.j2").write_text("Hello {{ first_name }}")
    (directory / "body.txt.j2").write_text("You have {{ points }} points, {{ email }}.\n")
    return directory


def send_args(crm: Crm, template: Path, tmp_path: Path, relay: str) -> list[str]:
    return [
        "send",
        "--recipients-sql",
        crm.url,
        "--query",
        QUERY,
        "--template",
        str(template),
        "--from",
        "News <news@example.com>",
        "--relay",
        relay,
        "--db",
        f"sqlite:///{tmp_path / 'ledger.db'}",
        "--no-progress",
    ]


def test_send_to_a_crm_query_then_resume(crm: Crm, template: Path, tmp_path: Path) -> None:
    special = customers_table(crm, 300)
    crm.execute("UPDATE customers SET active = 0 WHERE id = 2")
    # 299 rows (id 2 inactive); rejected: the bad addresses and the NULL email (id 4)
    expected = 299 - (len(special["bad"]) + 1) - len(special["duplicate"])
    with running_smtp_sink(tmp_path / "sink") as sink:
        args = send_args(crm, template, tmp_path, sink.url)
        done = mailpacer(*args)
        assert done.returncode == 0, done.stderr
        assert f"imported {expected:,} recipients from {crm.url} (query)" in done.stderr
        assert "(299 rows, 3 duplicates dropped, 3 rows rejected)" in done.stderr
        # row numbers count the result set: id 4 is its row 3, id 7 its row 6
        assert "  row 3: invalid address: empty address" in done.stderr
        assert "  row 6: invalid address: 'broken-7.example.org' must" in done.stderr
        assert "invalid UTF-8" not in done.stderr  # the Latin-1 note is not selected
        messages = sink.wait_for_count(expected)
        assert sorted(r for m in messages for r in m.recipients) == sorted(
            [
                f"customer{i}@example.org"
                for i in range(1, 301)
                if i not in (2, 3, 4) and i % 250 != 7 and i % 100 != 50
            ]
            + ["anna@xn--bcher-kva.example"]
        )
        first = next(m for m in messages if m.recipients == ["customer1@example.org"])
        assert b"Subject: Hello Name1" in first.content
        assert b"You have 10 points, customer1@example.org." in first.content

        again = mailpacer(*args)  # same query: resumes, nothing imported or sent twice
        assert again.returncode == 0, again.stderr
        assert "imported" not in again.stderr
        assert "0 sent this run" in again.stdout
        assert sink.count() == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT email FROM nowhere", "doesn't exist (MySQL error 1146)"),
        ("SELECT first_name FROM customers", "no 'email' column in the query's columns"),
        ("DELETE FROM customers", "the query must be one SELECT statement"),
    ],
)
def test_a_failing_query_is_one_error_line_and_exit_2(
    crm: Crm, template: Path, tmp_path: Path, query: str, expected: str
) -> None:
    customers_table(crm, 5)
    args = send_args(crm, template, tmp_path, "smtp://127.0.0.1:9")
    args[args.index("--query") + 1] = query
    done = mailpacer(*args)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
    assert crm.execute("SELECT COUNT(*) FROM customers") == ((5,),)
    assert not (tmp_path / "ledger.db").exists()  # stopped before the ledger was touched


def test_wrong_password_exit_2_without_the_password(
    crm: Crm, template: Path, tmp_path: Path
) -> None:
    args = send_args(crm, template, tmp_path, "smtp://127.0.0.1:9")
    args[args.index("--recipients-sql") + 1] = (
        f"mysql+pymysql://{USER}:Very$ecret@{HOST}:{PORT}/{crm.name}"
    )
    done = mailpacer(*args)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "Access denied" in done.stderr
    assert "ecret" not in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"--query": None}, "--recipients-sql needs --query"),
        ({"--recipients-sql": None}, "one of the arguments --recipients --recipients-sql"),
        ({"--recipients": "list.csv"}, "not allowed with argument"),
    ],
)
def test_option_mistakes(
    crm: Crm, template: Path, tmp_path: Path, change: dict[str, str | None], expected: str
) -> None:
    args = send_args(crm, template, tmp_path, "smtp://127.0.0.1:9")
    for option, value in change.items():
        if value is None:
            at = args.index(option)
            del args[at : at + 2]
        else:
            args += [option, value]
    done = mailpacer(*args)
    assert done.returncode == 2
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


def test_query_without_recipients_sql(template: Path, tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text("email\na@example.org\n")
    done = mailpacer(
        "send", "--recipients", str(tmp_path / "list.csv"), "--query", "SELECT 1",
        "--template", str(template), "--from", "n@example.com", "--relay", "smtp://127.0.0.1:9",
    )  # fmt: skip
    assert done.returncode == 2
    assert "error: --query goes with --recipients-sql URL" in done.stderr

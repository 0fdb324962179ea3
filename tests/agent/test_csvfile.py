"""CSV recipient lists, and their import into a real SQLite ledger."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailpacer.ledger import Ledger
from mailpacer.ledger.schema import recipients
from mailpacer.sources import (
    CsvRecipients,
    ImportReport,
    RecipientSourceError,
    RejectedRow,
    SourceRow,
    file_fingerprint,
    import_rows,
)
from mailpacer.sources.csvfile import MAX_LINE


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    db = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    db.upgrade()
    yield db
    db.dispose()


@pytest.fixture
def campaign_id(ledger: Ledger) -> int:
    return ledger.create_campaign(
        "spring", sender="news@example.org", template_dir="/t", settings={}
    ).id


def write(tmp_path: Path, data: bytes | str, name: str = "list.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def split(source: CsvRecipients) -> tuple[list[SourceRow], list[RejectedRow]]:
    good: list[SourceRow] = []
    bad: list[RejectedRow] = []
    for row in source:
        if isinstance(row, SourceRow):
            good.append(row)
        else:
            bad.append(row)
    return good, bad


def ledger_rows(ledger: Ledger, campaign_id: int) -> list[dict[str, object]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            sa.select(recipients)
            .where(recipients.c.campaign_id == campaign_id)
            .order_by(recipients.c.id)
        ).all()
    return [dict(r._mapping) for r in rows]


# -- the file as a whole -------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(RecipientSourceError, match="does not exist") as info:
        CsvRecipients(path)
    assert str(path) in str(info.value)


def test_directory_is_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(RecipientSourceError, match="is not a regular file"):
        CsvRecipients(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n\r\n", b"\xef\xbb\xbf", b" , \n"])
def test_empty_file_or_no_header(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(RecipientSourceError, match="empty file or no header row"):
        CsvRecipients(write(tmp_path, content))


def test_no_email_column_names_the_columns_found(tmp_path: Path) -> None:
    path = write(tmp_path, "mail,first_name,city\na@example.org,Ann,Graz\n")
    with pytest.raises(RecipientSourceError) as info:
        CsvRecipients(path)
    message = str(info.value)
    assert "no 'email' column" in message
    assert "found: mail, first_name, city" in message
    assert str(path) in message


def test_duplicate_and_unnamed_columns(tmp_path: Path) -> None:
    with pytest.raises(RecipientSourceError, match=r"duplicate column name.*: name"):
        CsvRecipients(write(tmp_path, "email,Name,name\n"))
    with pytest.raises(RecipientSourceError, match="column 2 has no name"):
        CsvRecipients(write(tmp_path, "email,,city\n"))


def test_header_with_invalid_utf8(tmp_path: Path) -> None:
    with pytest.raises(RecipientSourceError, match="header is not valid UTF-8"):
        CsvRecipients(write(tmp_path, b"email,n\xe4me\n"))


def test_header_only_file_has_no_rows(tmp_path: Path) -> None:
    assert list(CsvRecipients(write(tmp_path, "email,name\n"))) == []


def test_bom_is_stripped_and_email_column_is_case_insensitive(tmp_path: Path) -> None:
    source = CsvRecipients(write(tmp_path, b"\xef\xbb\xbf EMAIL ,Name\r\nann@example.org,Ann\r\n"))
    assert source.columns == ["email", "Name"]
    good, bad = split(source)
    assert bad == []
    assert good[0].variables == {"email": "ann@example.org", "Name": "Ann"}


def test_other_columns_become_variables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'first_name,email,city,note\nZoë,Zoe@Example.ORG,Zürich,"a, ""quoted""\nnote"\n',
    )
    good, bad = split(CsvRecipients(path))
    assert bad == []
    (row,) = good
    assert row.line == 2
    assert row.address.address == "Zoe@example.org"
    assert row.address.key == "zoe@example.org"
    assert row.variables == {
        "first_name": "Zoë",
        "email": "Zoe@example.org",  # normalized, as it will be sent
        "city": "Zürich",
        "note": 'a, "quoted"\nnote',
    }


# -- bad rows: reported with their line, skipped, counted --------------------------------

BAD_ROWS = (
    b"email,name,city\n"  # 1
    b"ann@example.org,Ann,Graz\n"  # 2
    b"bob@example.org,Bob\n"  # 3: too few fields
    b"\n"  # 4: blank, ignored
    b'cat@example.org,"two\nlines",Wien\n'  # 5-6: fine, reported at its first line
    b"dan@example.org,J\xf6rg,Linz\n"  # 7: Latin-1, not UTF-8
    b"not-an-address,X,Y\n"  # 8
    b"eve@example.org,E,V,extra\n"  # 9: too many fields
    b"fay@example.org,a\x00b,c\n"  # 10: NUL
    b"gus@example.org,Gus,Graz\n"  # 11
    b"a..b@example.org,H,I\n"  # 12
    b'ivy@example.org,"unterminated,Graz\n'  # 13: quote never closed, swallows the rest
)


def test_bad_rows_are_reported_with_line_numbers(tmp_path: Path) -> None:
    good, bad = split(CsvRecipients(write(tmp_path, BAD_ROWS)))
    assert [(r.line, r.address.address) for r in good] == [
        (2, "ann@example.org"),
        (5, "cat@example.org"),
        (11, "gus@example.org"),
    ]
    reasons = {r.line: r.reason for r in bad}
    assert sorted(reasons) == [3, 7, 8, 9, 10, 12, 13]
    assert reasons[3] == "2 fields where the header has 3"
    assert reasons[7] == "invalid UTF-8"
    assert reasons[8].startswith("invalid address:")
    assert "exactly one @" in reasons[8]
    assert reasons[9] == "4 fields where the header has 3"
    assert "NUL" in reasons[10]
    assert "dots" in reasons[12]


def test_import_counts_and_skips_bad_rows(tmp_path: Path, ledger: Ledger, campaign_id: int) -> None:
    report = import_rows(ledger, campaign_id, CsvRecipients(write(tmp_path, BAD_ROWS)))
    assert (report.rows, report.imported, report.duplicates, report.rejected) == (10, 3, 0, 7)
    assert report.as_dict()["rejected_rows"][0] == {
        "line": 3,
        "reason": "2 fields where the header has 3",
    }
    rows = ledger_rows(ledger, campaign_id)
    assert [(r["email"], r["source_row"], r["status"]) for r in rows] == [
        ("ann@example.org", 2, "pending"),
        ("cat@example.org", 5, "pending"),
        ("gus@example.org", 11, "pending"),
    ]
    assert json.loads(str(rows[1]["variables"])) == {
        "email": "cat@example.org",
        "name": "two\nlines",
        "city": "Wien",
    }


def test_overlong_line_is_rejected_not_loaded(tmp_path: Path) -> None:
    data = (
        b"email,name\n"
        + b"a@example.org,"
        + b"x" * (MAX_LINE + 10)
        + b"\n"
        + b"b@example.org,Bob\n"
    )
    good, bad = split(CsvRecipients(write(tmp_path, data)))
    assert [r.address.address for r in good] == ["b@example.org"]
    assert [(r.line, r.reason) for r in bad] == [(2, f"line longer than {MAX_LINE} bytes")]
    assert good[0].line == 3


def test_garbage_never_crashes(tmp_path: Path) -> None:
    noise = bytes(range(256)) * 40 + b'"\r\n"\n\r,,,"' * 50
    data = b"email,name\n" + noise + b"\nz@example.org,Zed\n"
    good, bad = split(CsvRecipients(write(tmp_path, data)))
    assert all(r.line >= 2 for r in bad)
    assert bad  # the noise was reported, not silently dropped
    for row in good:
        assert "\x00" not in "".join(row.variables.values())


# -- duplicates and volume -----------------------------------------------------------------


def test_duplicates_case_insensitive_are_imported_once(
    tmp_path: Path, ledger: Ledger, campaign_id: int
) -> None:
    path = write(
        tmp_path,
        "email,name\n"
        "ann@example.org,first\n"
        "ANN@EXAMPLE.ORG,second\n"
        "Ann@Example.Org,third\n"
        "bob@bücher.example,Bob\n"
        "bob@xn--bcher-kva.example,Bob again\n",
    )
    report = import_rows(ledger, campaign_id, CsvRecipients(path), batch_size=2)
    assert (report.rows, report.imported, report.duplicates, report.rejected) == (5, 2, 3, 0)
    rows = ledger_rows(ledger, campaign_id)
    assert [(r["email"], r["source_row"]) for r in rows] == [
        ("ann@example.org", 2),  # the first occurrence wins
        ("bob@xn--bcher-kva.example", 5),
    ]
    assert json.loads(str(rows[0]["variables"]))["name"] == "first"


def test_reimport_adds_only_new_addresses(tmp_path: Path, ledger: Ledger, campaign_id: int) -> None:
    first = write(tmp_path, "email\na@example.org\nb@example.org\n", "one.csv")
    second = write(tmp_path, "email\nB@example.org\nc@example.org\n", "two.csv")
    assert import_rows(ledger, campaign_id, CsvRecipients(first)).imported == 2
    report = import_rows(ledger, campaign_id, CsvRecipients(second))
    assert (report.imported, report.duplicates) == (1, 1)
    assert ledger.count_recipients(campaign_id) == 3


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    path = write(tmp_path, "email\na@example.org\n")
    before = file_fingerprint(path)
    assert before == file_fingerprint(path)
    assert len(before) == 64
    path.write_text("email\nb@example.org\n")
    assert file_fingerprint(path) != before
    with pytest.raises(RecipientSourceError, match="cannot read"):
        file_fingerprint(tmp_path / "missing.csv")


def test_100k_rows_import_quickly_and_count_right(
    tmp_path: Path, ledger: Ledger, campaign_id: int
) -> None:
    lines = ["email,first_name,n"]
    for n in range(100_000):
        lines.append(f"user{n}@example.org,User {n},{n}")
    for n in range(0, 100_000, 1000):  # 100 case-variant duplicates
        lines.append(f"USER{n}@EXAMPLE.ORG,dup,{n}")
    for n in range(50):  # 50 bad rows
        lines.append(f"broken{n},x,y")
    path = write(tmp_path, "\n".join(lines) + "\n")
    progress: list[int] = []

    def on_progress(report: ImportReport) -> None:
        progress.append(report.imported)

    started = time.monotonic()
    report = import_rows(ledger, campaign_id, CsvRecipients(path), progress=on_progress)
    elapsed = time.monotonic() - started
    assert report.rows == 100_150
    assert report.imported == 100_000
    assert report.duplicates == 100
    assert report.rejected == 50
    assert len(report.rejected_samples) == 50
    assert report.rejected_samples[0].line == 100_102
    assert ledger.count_recipients(campaign_id) == 100_000
    assert ledger.state_counts(campaign_id)["pending"] == 100_000
    assert progress == sorted(progress)
    assert progress[-1] == 100_000
    # ~2 s on an idle machine; the bound only catches a quadratic regression
    assert elapsed < 20, f"100k-row import took {elapsed:.1f}s"

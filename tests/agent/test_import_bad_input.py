"""Importing big, dirty CSV files into a real SQLite ledger: every bad row counted, a bounded
number kept as samples, memory independent of the file's size, failures stop the import."""

from __future__ import annotations

import gc
import json
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailpacer.ledger import Ledger
from mailpacer.ledger.schema import recipients
from mailpacer.sources import (
    CsvRecipients,
    RecipientSourceError,
    RejectedRow,
    SourceRow,
    import_rows,
)
from mailpacer.sources.csvfile import MAX_LINE
from mailpacer.sources.importer import MAX_REJECTED_KEPT

BAD_KINDS = {
    0: (b"%%% garbage ;; line %%%", "1 fields where the header has 3"),
    1: (b"j\xf6rg@example.org,J\xf6rg,x", "invalid UTF-8"),
    2: (b"long@example.org," + b"x" * (MAX_LINE + 5) + b",y", f"line longer than {MAX_LINE} bytes"),
    3: (b"nul@example.org,a\x00b,c", "NUL byte in a field"),
    4: (b"no-at-sign.example.org,A,B", "invalid address:"),
}


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    db = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    db.upgrade()
    yield db
    db.dispose()


def new_campaign(ledger: Ledger, name: str = "c") -> int:
    return ledger.create_campaign(name, sender="n@example.org", template_dir="/t", settings={}).id


def dirty_csv(path: Path, rows: int, bad_every: int) -> dict[str, object]:
    """``rows`` data rows; every ``bad_every``-th is bad (kinds in turn); every 97th has an
    IDNA domain; every 1000th repeats an earlier address in upper case (with bad_every
    40 or 10,000, that earlier row is a good one)."""
    bad: dict[int, str] = {}
    good = dup = idna = 0
    with path.open("wb") as f:
        f.write(b"email,name,city\n")
        for i in range(rows):
            line_no = i + 2
            if i % bad_every == bad_every - 1:
                data, reason = BAD_KINDS[len(bad) % len(BAD_KINDS)]
                bad[line_no] = reason
            elif i % 1000 == 999:
                domain = "BÜCHER.EXAMPLE" if (i - 500) % 97 == 0 else "EXAMPLE.ORG"
                data = f"USER{i - 500}@{domain},dup,x".encode()  # row i-500 is never bad
                dup += 1
            elif i % 97 == 0:
                data = f"user{i}@bücher.example,Zoë,Zürich".encode()
                idna += 1
                good += 1
            else:
                data = f"user{i}@example.org,Name {i},Graz".encode()
                good += 1
            f.write(data + b"\n")
    return {"bad": bad, "good": good, "dup": dup, "idna": idna}


def test_dirty_50k_rows_counted_exactly_samples_capped(tmp_path: Path, ledger: Ledger) -> None:
    path = tmp_path / "dirty.csv"
    expect = dirty_csv(path, 50_000, bad_every=40)  # 1,250 bad rows: more than the cap
    bad = expect["bad"]
    assert isinstance(bad, dict)
    assert len(bad) > MAX_REJECTED_KEPT
    campaign = new_campaign(ledger)
    report = import_rows(ledger, campaign, CsvRecipients(path))
    assert report.rows == 50_000
    assert report.rejected == len(bad)
    assert report.duplicates == expect["dup"]
    assert report.imported == expect["good"]
    assert ledger.count_recipients(campaign) == expect["good"]
    # the first MAX_REJECTED_KEPT are kept, in file order, each with its line and reason
    assert len(report.rejected_samples) == MAX_REJECTED_KEPT
    kept = sorted(bad.items())[:MAX_REJECTED_KEPT]
    assert [r.line for r in report.rejected_samples] == [line for line, _ in kept]
    for row, (_, reason) in zip(report.rejected_samples, kept, strict=True):
        assert row.reason.startswith(reason), (row, reason)
    assert len(report.as_dict()["rejected_rows"]) == MAX_REJECTED_KEPT
    with ledger.engine.connect() as conn:
        idna = conn.execute(
            sa.select(sa.func.count()).where(recipients.c.email.like("%@xn--bcher-kva.example"))
        ).scalar_one()
        zoe = conn.execute(
            sa.select(recipients.c.variables).where(recipients.c.source_row == 2)
        ).scalar_one()
    assert idna == expect["idna"]
    assert json.loads(zoe) == {
        "email": "user0@xn--bcher-kva.example",
        "name": "Zoë",
        "city": "Zürich",
    }


def test_python_memory_does_not_grow_with_the_number_of_rows(tmp_path: Path) -> None:
    """Peak Python allocations while importing 8k and 40k rows (batches of 1,000): the
    same, give or take (anything kept per row would add megabytes)."""
    peaks = []
    for rows in (8_000, 40_000):
        path = tmp_path / f"{rows}.csv"
        dirty_csv(path, rows, bad_every=500)
        db = Ledger(f"sqlite:///{tmp_path / f'{rows}.db'}")
        db.upgrade()
        campaign = new_campaign(db)
        gc.collect()
        tracemalloc.start()
        try:
            report = import_rows(db, campaign, CsvRecipients(path), batch_size=1000)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
            db.dispose()
        assert report.rows == rows
    small, large = peaks
    assert large < small * 1.3 + 1_000_000, f"peak {small / 1e6:.1f} MB -> {large / 1e6:.1f} MB"
    assert large < 20_000_000


def test_a_failing_ledger_stops_the_import_and_raises(tmp_path: Path, ledger: Ledger) -> None:
    consumed = 0

    def rows() -> Iterator[SourceRow | RejectedRow]:
        nonlocal consumed
        for row in CsvRecipients(path):
            consumed += 1
            yield row

    path = tmp_path / "list.csv"
    dirty_csv(path, 100_000, bad_every=10_000)
    # campaign 999 does not exist: the foreign key refuses the first batch
    with pytest.raises(sa.exc.IntegrityError):
        import_rows(ledger, 999, rows(), batch_size=1000)
    assert consumed < 20_000  # stopped soon after the writer failed, not at the end
    assert ledger.count_recipients(999) == 0
    assert not [t for t in threading.enumerate() if t.name == "mailpacer-import-writer"]


def test_a_source_failing_midway_keeps_what_was_imported(tmp_path: Path, ledger: Ledger) -> None:
    path = tmp_path / "list.csv"
    expect = dirty_csv(path, 30_000, bad_every=10_000)

    def rows() -> Iterator[SourceRow | RejectedRow]:
        for n, row in enumerate(CsvRecipients(path), 1):
            if n > 12_000:
                raise RecipientSourceError("connection lost after 12,000 rows")
            yield row

    campaign = new_campaign(ledger)
    with pytest.raises(RecipientSourceError, match="connection lost"):
        import_rows(ledger, campaign, rows(), batch_size=5000)
    first = ledger.count_recipients(campaign)
    assert 0 < first <= 12_000
    assert not [t for t in threading.enumerate() if t.name == "mailpacer-import-writer"]
    # importing again completes the list; nothing is there twice
    report = import_rows(ledger, campaign, CsvRecipients(path))
    assert first + report.imported == expect["good"]
    assert ledger.count_recipients(campaign) == expect["good"]


def test_sqlite_settings_are_restored_after_the_import(tmp_path: Path, ledger: Ledger) -> None:
    path = tmp_path / "list.csv"
    dirty_csv(path, 1000, bad_every=500)

    def pragmas() -> tuple[int, int]:
        with ledger.engine.connect() as conn:
            cache = conn.exec_driver_sql("PRAGMA cache_size").scalar_one()
            checkpoint = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()
        return int(cache), int(checkpoint)

    before = pragmas()
    campaign = new_campaign(ledger)
    import_rows(ledger, campaign, CsvRecipients(path))
    assert pragmas() == before
    assert before == (-2000, 1000)  # SQLite's defaults


@pytest.mark.parametrize(
    "variables",
    [
        {"email": "a@example.org", "name": 'Zoë "Q" \\ \n\t\r\x1f\u2028 ✓ 😀'},
        {"email": "b@example.org"},
        {"email": "c@example.org", "": "", 'with "quote"': "x"},
        {"email": "d@example.org", "points": 10},  # not a str: json decides
    ],
)
def test_variables_are_stored_as_json_dumps_would(variables: dict[str, str]) -> None:
    from mailpacer.sources.importer import _VariablesEncoder

    encoder = _VariablesEncoder()
    for _ in range(2):  # first with unknown keys, then cached
        assert encoder.encode(variables) == json.dumps(
            variables, ensure_ascii=False, separators=(",", ":")
        )

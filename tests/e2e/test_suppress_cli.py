"""`mailpacer suppress add | remove | list | import`, and a send that honours the list."""

from __future__ import annotations

import json
from pathlib import Path

from .test_crash_kill import delivered, ledger_rows, sink_process
from .test_run_agent import TEMPLATE, mailpacer, write_list


def test_suppression_list_round_trip_and_a_send_that_skips_it(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    added = mailpacer("suppress", "add", "R00003@Example.NET", "blocked.example", "--db", db,
                      "--reason", "unsubscribed")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "r00003@example.net: suppressed" in added.stdout.lower()
    again = mailpacer("suppress", "add", "r00003@example.net", "--db", db)
    assert "already listed" in again.stdout
    bad = mailpacer("suppress", "add", "not an address@@", "--db", db)
    assert bad.returncode == 2
    assert "cannot suppress" in bad.stderr
    assert "Traceback" not in bad.stderr

    listing = tmp_path / "unsubscribed.csv"
    listing.write_text("email\nr00004@example.net\n# a comment\n\nbad@@x\nr00005@example.net\n")
    imported = mailpacer("suppress", "import", str(listing), "--db", db, "--json")
    assert imported.returncode == 1  # one line rejected: attention
    document = json.loads(imported.stdout)
    assert (document["added"], document["rejected"]) == (2, 1)
    assert "line 5" in document["rejected_lines"][0]

    page = json.loads(mailpacer("suppress", "list", "--db", db, "--json", "--limit", "3").stdout)
    assert page["total"] == 4
    assert [s["value"] for s in page["suppressions"]] == [
        "r00003@example.net", "blocked.example", "r00004@example.net",
    ]  # fmt: skip
    rest = mailpacer("suppress", "list", "--db", db, "--json", "--after", str(page["next_after"]))
    assert [s["value"] for s in json.loads(rest.stdout)["suppressions"]] == ["r00005@example.net"]

    removed = mailpacer("suppress", "remove", "r00005@example.net", "nobody@x.org", "--db", db)
    assert removed.returncode == 1  # one of them was not listed
    assert "r00005@example.net: removed" in removed.stdout

    emails = write_list(tmp_path / "list.csv", 8)
    with (tmp_path / "list.csv").open("a") as f:
        f.write("someone@blocked.example,Ana,X,Porto,M-9\n")
    store = tmp_path / "received"
    with sink_process(store) as relay:
        sent = mailpacer(
            "send", "--recipients", str(tmp_path / "list.csv"), "--template", str(TEMPLATE),
            "--from", "News <news@example.com>", "--relay", relay, "--db", db,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
    got = set(delivered(store))
    skipped = {"r00003@example.net", "r00004@example.net", "someone@blocked.example"}
    assert got == set(emails) - skipped  # r00005 was removed from the list: mailed
    rows = ledger_rows(db)
    assert {e for e, s in rows.items() if s == "suppressed"} == skipped

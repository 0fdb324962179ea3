"""The ledger's suppression list as the control API uses it, on SQLite and on MariaDB:
keyset paging, lookup, removal."""

from __future__ import annotations

import pytest

from mailpacer.ledger import Ledger, LedgerError

from ..ledger.backends import ledger_on_each_backend

__all__ = ["ledger_on_each_backend"]  # a fixture


@pytest.fixture
def ledger(ledger_on_each_backend: Ledger) -> Ledger:
    return ledger_on_each_backend


def test_list_pages_find_and_remove(ledger: Ledger) -> None:
    for n in range(7):
        assert ledger.add_suppression(f"User{n}@Example.COM", reason=f"r{n}", now=100.0 + n)
    assert ledger.add_suppression("spam.example", reason="domain", source="api", now=200.0)
    assert not ledger.add_suppression("user3@example.com", now=300.0)  # already there

    first = ledger.list_suppressions(limit=3)
    assert [s["value"] for s in first] == [
        "user0@example.com",
        "user1@example.com",
        "user2@example.com",
    ]
    assert first[0]["kind"] == "address"
    assert first[0]["reason"] == "r0"
    assert first[0]["created_at"] == 100.0
    seen = [s["id"] for s in first]
    after = first[-1]["id"]
    while page := ledger.list_suppressions(after=after, limit=3):
        seen += [s["id"] for s in page]
        after = page[-1]["id"]
    assert len(seen) == len(set(seen)) == 8
    assert seen == sorted(seen)
    assert ledger.count_suppressions() == 8
    assert ledger.count_suppressions(kind="domain") == 1
    domains = ledger.list_suppressions(kind="domain")
    assert [(s["value"], s["source"]) for s in domains] == [("spam.example", "api")]

    found = ledger.find_suppression("USER4@example.com")
    assert found is not None
    assert found["value"] == "user4@example.com"
    assert ledger.find_suppression("nobody@example.com") is None
    assert ledger.find_suppression("SPAM.example") is not None

    assert ledger.remove_suppression("user4@EXAMPLE.com")
    assert not ledger.remove_suppression("user4@example.com")
    assert ledger.remove_suppression("spam.example")
    assert ledger.find_suppression("user4@example.com") is None
    assert ledger.count_suppressions() == 6


def test_bad_values_are_ledger_errors(ledger: Ledger) -> None:
    for bad in ("not an address@", "a@@b", ""):
        with pytest.raises(LedgerError):
            ledger.remove_suppression(bad)
        with pytest.raises(LedgerError):
            ledger.find_suppression(bad)

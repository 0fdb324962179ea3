"""Outcomes and the outbox events that report them are written in one transaction."""

from __future__ import annotations

import time

import pytest

from mailpacer.ledger import Ledger, Outcome, RecipientState

from .test_schema_leases import LEASE, add, cid, ledger, status_of, url

__all__ = ["cid", "ledger", "url"]

R = RecipientState


def claim_all(ledger: Ledger, cid: int) -> list[int]:
    claimed = ledger.claim(cid, "a:1", 10, now=time.time(), lease_seconds=LEASE)
    ledger.mark_sending([c.id for c in claimed], "a:1", now=time.time())
    return [c.id for c in claimed]


def test_outcomes_and_their_events_land_together(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, ["a@example.org", "b@example.org"])
    first, second = claim_all(ledger, cid)
    ledger.record(
        [Outcome(first, R.SENT, 250, "ok"), Outcome(second, R.FAILED, 550, "no such user")],
        [(cid, second, "recipient.failed", {"code": 550})],
    )
    assert status_of(ledger, cid) == {"a@example.org": "sent", "b@example.org": "failed"}
    (event,) = ledger.undelivered_events()
    assert event["type"] == "recipient.failed"
    assert event["recipient_id"] == second


def test_an_event_that_cannot_be_written_rolls_the_outcomes_back(ledger: Ledger, cid: int) -> None:
    add(ledger, cid, ["a@example.org"])
    (only,) = claim_all(ledger, cid)
    unserializable = {"reply": object()}  # json.dumps fails inside the transaction
    with pytest.raises(TypeError):
        ledger.record(
            [Outcome(only, R.FAILED, 550, "x")], [(cid, only, "recipient.failed", unserializable)]
        )
    assert status_of(ledger, cid) == {"a@example.org": "sending"}  # not failed without its event
    assert ledger.undelivered_events() == []

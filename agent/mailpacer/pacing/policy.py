"""What an SMTP result means for the recipient: sent, retry later (when), or give up."""

from __future__ import annotations

import random
from dataclasses import dataclass

from mailpacer.ledger.states import RecipientState
from mailpacer.ledger.store import Outcome
from mailpacer.smtp.client import ResultKind, SendResult, Stage

__all__ = ["RetryPolicy", "outcome_for"]

# "Unknown user" style rejections of the recipient itself (RFC 5321 4.2.2 / 3463 X.1.x).
BOUNCE_CODES = frozenset({550, 551, 553})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient failures, up to a maximum age."""

    base: float = 60.0
    maximum: float = 3600.0
    max_age: float = 86400.0
    jitter: float = 0.2

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds before retry number ``attempts`` (1 = first retry)."""
        raw = min(self.maximum, self.base * 2.0 ** max(0, attempts - 1))
        spread: float = (rng or random).uniform(-self.jitter, self.jitter)
        return max(1.0, raw * (1.0 + spread))


def describe(result: SendResult) -> str:
    """The full reply (or local reason), prefixed by the stage that produced it."""
    return f"{result.stage.value}: {result.reply_text}"


def outcome_for(
    result: SendResult,
    *,
    recipient_id: int,
    attempts: int,
    first_attempt_at: float | None,
    now: float,
    policy: RetryPolicy,
    retry_after: float | None = None,
) -> Outcome:
    """Map one SMTP result to the recipient's next state.

    ``retry_after``: seconds a server asked us to wait ("try again in 30 seconds", see
    ``pacing.feedback.classify_reply``); a deferral is then retried no earlier than that.
    """
    code = result.reply.code if result.reply is not None else None
    kind = result.kind
    if kind is ResultKind.SENT:
        return Outcome(recipient_id, RecipientState.SENT, code, describe(result), at=now)
    if kind is ResultKind.UNCERTAIN:
        return Outcome(recipient_id, RecipientState.UNCERTAIN, code, describe(result), at=now)
    if kind is ResultKind.NOT_SENT:
        return Outcome(
            recipient_id, RecipientState.PENDING, None, describe(result), attempted=False, at=now
        )
    if kind is ResultKind.PERMANENT:
        state = RecipientState.FAILED
        if result.stage is Stage.RCPT and code in BOUNCE_CODES:
            state = RecipientState.BOUNCED
        return Outcome(recipient_id, state, code, describe(result), at=now)
    # transient
    started = first_attempt_at if first_attempt_at is not None else now
    if now - started >= policy.max_age:
        text = f"{describe(result)} [gave up: still failing after {policy.max_age:g}s]"
        return Outcome(recipient_id, RecipientState.FAILED, code, text, at=now)
    retry_at = now + max(policy.delay(attempts + 1), retry_after or 0.0)
    return Outcome(
        recipient_id,
        RecipientState.DEFERRED,
        code,
        describe(result),
        next_attempt_at=retry_at,
        at=now,
    )

"""Delivery status notifications (RFC 3464): which recipient failed, and how.

A bounce is *hard* (the address must not be mailed again) when its action is ``failed``
and its status class is 5 (``5.1.1`` unknown user...). Delays (``delayed``, 4.x.x) and
anything that is not a DSN are not hard bounces.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from email.message import Message

__all__ = ["DsnRecipient", "parse_dsn"]


@dataclass(frozen=True)
class DsnRecipient:
    final_recipient: str | None
    action: str
    status: str
    diagnostic: str

    @property
    def hard(self) -> bool:
        return self.action == "failed" and self.status.startswith("5")

    def describe(self) -> str:
        detail = f": {self.diagnostic}" if self.diagnostic else ""
        return f"DSN {self.action} {self.status}{detail}"


def _address(value: str | None) -> str | None:
    """``rfc822; user@example.org`` -> ``user@example.org``."""
    if not value:
        return None
    return value.split(";", 1)[-1].strip() or None


def parse_dsn(raw: bytes) -> list[DsnRecipient]:
    """The per-recipient parts of a DSN; ``[]`` when ``raw`` is not one."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    if message.get_content_type() != "multipart/report":
        return []
    found: list[DsnRecipient] = []
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        if not isinstance(blocks, list):
            continue
        for block in blocks[1:]:  # the first block holds the per-message fields
            if not isinstance(block, Message):
                continue
            action = (block.get("Action") or "").strip().lower()
            status = (block.get("Status") or "").strip().split(" ")[0]
            if not action or not status:
                continue
            diagnostic = " ".join((block.get("Diagnostic-Code") or "").split())
            found.append(
                DsnRecipient(
                    final_recipient=_address(block.get("Final-Recipient")),
                    action=action,
                    status=status,
                    diagnostic=diagnostic.split(";", 1)[-1].strip()[:1000],
                )
            )
    return found

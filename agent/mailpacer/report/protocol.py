"""The wire format (pure: no I/O). See docs/report-protocol.md.

A request is one JSON document, gzip-compressed above a size, signed with HMAC-SHA256 over
``<timestamp>.<body as sent>``. The signature covers the bytes on the wire, so a receiver
checks it before decompressing or parsing anything.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONTENT_TYPE",
    "IDEMPOTENCY_HEADER",
    "LIFECYCLE_TYPES",
    "PROTOCOL_VERSION",
    "SIGNATURE_HEADER",
    "SUCCESS_TYPES",
    "TIMESTAMP_HEADER",
    "Encoded",
    "OutboxEvent",
    "build_document",
    "encode",
    "idempotency_key",
    "included",
    "sign",
    "verify",
]

PROTOCOL_VERSION = 1
CONTENT_TYPE = "application/json"
SIGNATURE_HEADER = "X-Mailpacer-Signature"
TIMESTAMP_HEADER = "X-Mailpacer-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"

# Campaign lifecycle events go out at the next allowed moment, whatever the interval.
LIFECYCLE_TYPES = frozenset(
    {"campaign.started", "campaign.paused", "campaign.finished", "campaign.failed",
     "campaign.cancelled"}
)  # fmt: skip
# With detail = "failures", these are covered by the counters, not sent one by one.
SUCCESS_TYPES = frozenset({"recipient.sent"})


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One row of the events outbox; ``seq`` is its monotonic id."""

    seq: int
    type: str
    campaign_id: int | None
    campaign: str | None
    recipient_id: int | None
    payload: Mapping[str, Any]
    created_at: float

    def to_wire(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "type": self.type,
            "campaign_id": self.campaign_id,
            "campaign": self.campaign,
            "recipient_id": self.recipient_id,
            "created_at": self.created_at,
            "data": dict(self.payload),
        }


@dataclass(frozen=True, slots=True)
class Encoded:
    body: bytes
    headers: dict[str, str]


def included(event_type: str, detail: str) -> bool:
    """Whether an event is sent one by one at this ``report.detail``."""
    return detail == "all" or event_type not in SUCCESS_TYPES


def idempotency_key(source: str, first: int, last: int) -> str:
    return f"{source}:{first}-{last}"


def build_document(
    *,
    source: str,
    first: int | None,
    last: int | None,
    events: Sequence[OutboxEvent],
    campaigns: Sequence[Mapping[str, Any]],
    sent_at: float,
    backlog: int,
) -> dict[str, Any]:
    """The request body. ``first``/``last`` is the outbox range the request covers (events
    left out by ``detail`` are inside it too); None when it carries only counters."""
    sequence = None if first is None or last is None else {"first": first, "last": last}
    return {
        "protocol": PROTOCOL_VERSION,
        "source": source,
        "idempotency_key": (
            idempotency_key(source, first, last)
            if first is not None and last is not None
            else f"{source}:counters-{sent_at:.3f}"
        ),
        "sent_at": sent_at,
        "sequence": sequence,
        "backlog": backlog,
        "events": [e.to_wire() for e in events],
        "campaigns": [dict(c) for c in campaigns],
    }


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, header: str) -> bool:
    """Constant-time check of a ``v1=<hex>`` signature header."""
    try:
        expected = sign(secret, timestamp, body)
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(expected.encode(), header.strip().encode("ascii", "replace"))


def encode(
    document: Mapping[str, Any], *, secret: bytes, timestamp: float, gzip_min: int
) -> Encoded:
    """Serialize, compress above ``gzip_min`` bytes, sign."""
    raw = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    headers = {"Content-Type": CONTENT_TYPE}
    if len(raw) > gzip_min:
        raw = gzip.compress(raw, compresslevel=6, mtime=0)
        headers["Content-Encoding"] = "gzip"
    stamp = str(int(timestamp))
    headers[TIMESTAMP_HEADER] = stamp
    headers[SIGNATURE_HEADER] = sign(secret, stamp, raw)
    headers[IDEMPOTENCY_HEADER] = str(document["idempotency_key"])
    return Encoded(raw, headers)

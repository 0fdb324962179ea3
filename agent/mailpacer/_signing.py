"""Truncated HMAC-SHA256 tags: what the VERP return paths and the unsubscribe tokens share.

Both put a short signature into an address or a URL that a stranger sends back to us, so a
forged one cannot mark a recipient bounced or unsubscribe an address. ``purpose`` keeps the
tags of one use from being valid for the other when an operator reuses a secret.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["tag", "tag_matches"]


def tag(secret: bytes, message: bytes, size: int, *, purpose: bytes = b"") -> bytes:
    """The first ``size`` bytes of HMAC-SHA256(secret, purpose + message)."""
    return hmac.new(secret, purpose + message, hashlib.sha256).digest()[:size]


def tag_matches(
    secret: bytes, message: bytes, presented: bytes, size: int, *, purpose: bytes = b""
) -> bool:
    """Whether ``presented`` is the ``size``-byte tag of ``message`` (constant time). The
    size is the verifier's, never the presenter's: a short tag is not a weaker match."""
    return hmac.compare_digest(tag(secret, message, size, purpose=purpose), presented)

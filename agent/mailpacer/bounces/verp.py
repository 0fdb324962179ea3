"""VERP return paths: ``bounce+<recipient id>-<signature>@<bounce domain>``.

Each message's envelope sender names its recipient, so a bounce says whose message failed
even when the DSN itself is vague. The signature (HMAC-SHA256, 64 bits) means a forged
bounce cannot mark an arbitrary recipient bounced.
"""

from __future__ import annotations

import re

from mailpacer._signing import tag, tag_matches

__all__ = ["Verp"]

_LOCAL = re.compile(r"^(?P<prefix>[a-z0-9.-]+)\+(?P<rid>[0-9a-z]{1,13})-(?P<sig>[0-9a-f]{16})$")


class Verp:
    def __init__(self, domain: str, secret: bytes, prefix: str = "bounce") -> None:
        if not domain or "@" in domain or not re.fullmatch(r"[A-Za-z0-9.-]+", domain):
            raise ValueError(f"bounce domain {domain!r}: expected a host name")
        if len(secret) < 16:
            raise ValueError("the VERP secret needs at least 16 bytes")
        self.domain = domain.lower()
        self.secret = secret
        self.prefix = prefix.lower()

    def _sign(self, rid: str) -> str:
        return tag(self.secret, rid.encode(), 8).hex()  # 64 bits, as hex: any case survives

    def address(self, recipient_id: int) -> str:
        rid = _base36(recipient_id)
        return f"{self.prefix}+{rid}-{self._sign(rid)}@{self.domain}"

    def recipient_id(self, address: str) -> int | None:
        """The recipient id a return path names, or None if it is not ours or forged."""
        local, _, domain = address.strip().strip("<>").lower().rpartition("@")
        if domain != self.domain:
            return None
        match = _LOCAL.match(local)
        if match is None or match["prefix"] != self.prefix:
            return None
        if not tag_matches(self.secret, match["rid"].encode(), bytes.fromhex(match["sig"]), 8):
            return None
        return int(match["rid"], 36)


def _base36(number: int) -> str:
    if number < 0:
        raise ValueError("recipient ids are positive")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if number == 0:
            return out

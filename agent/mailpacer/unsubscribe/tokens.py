"""Signed unsubscribe links: RFC 2369 ``List-Unsubscribe`` and RFC 8058 one-click.

A token names a campaign and an address and carries their signature, so the agent can
suppress the address from the token alone (no lookup, nothing written for a forged one)::

    token = base64url(varint(campaign id) + address (UTF-8) + tag)   (no padding)
    tag   = HMAC-SHA256(secret, purpose + varint + address), first 8 bytes (64 bits, as VERP)

Every message of a campaign gets::

    List-Unsubscribe: <https://BASE/unsubscribe/TOKEN>,
     <mailto:unsubscribe+TOKEN@DOMAIN>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

The token is base64url only (``A-Z a-z 0-9 - _``), so it can go into a header, a URL path
and an address's local part unchanged. The mailto URI is left out when its local part would
be longer than the 64 octets RFC 5321 allows (long addresses); the HTTPS one stays.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from mailpacer._signing import tag, tag_matches

__all__ = [
    "MAILTO_PREFIX",
    "Unsubscribe",
    "UnsubscribeSettings",
    "check_base_url",
    "mailto_token",
    "make_token",
    "read_token",
]

MAILTO_PREFIX = "unsubscribe"
TAG_SIZE = 8
MAX_TOKEN = 600  # characters: an address of 320 bytes and its tag need ~450
MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
_PURPOSE = b"mailpacer-unsubscribe-v1\0"
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_URL_SAFE = re.compile(r"[A-Za-z0-9._~:/?#@!$&'()*+;=%-]+")  # no space, <, >, ", comma


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """What a valid token asks for: take ``address`` off the lists of ``campaign_id``'s
    sender (the whole suppression list; ``via`` says how the request came)."""

    campaign_id: int
    address: str
    via: str = "https"  # or "mailto"


def _varint(number: int) -> bytes:
    if number < 0:
        raise ValueError("campaign ids are positive")
    out = bytearray()
    while True:
        number, low = divmod(number, 128)
        out.append(low | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _read_varint(data: bytes) -> tuple[int, int] | None:
    """(value, bytes used); None when ``data`` does not start with one (at most 8 bytes)."""
    value = 0
    for n, byte in enumerate(data[:8]):
        value |= (byte & 0x7F) << (7 * n)
        if not byte & 0x80:
            return value, n + 1
    return None


def make_token(secret: bytes, campaign_id: int, address: str) -> str:
    payload = _varint(campaign_id) + address.encode("utf-8")
    raw = payload + tag(secret, payload, TAG_SIZE, purpose=_PURPOSE)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def read_token(secret: bytes, token: str) -> Unsubscribe | None:
    """The request a token carries; None when it is malformed, forged or another secret's."""
    if not 0 < len(token) <= MAX_TOKEN or not _TOKEN.fullmatch(token):
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        return None  # not canonical (stray bits in the last character)
    if len(raw) <= TAG_SIZE:
        return None
    payload, presented = raw[:-TAG_SIZE], raw[-TAG_SIZE:]
    if not tag_matches(secret, payload, presented, TAG_SIZE, purpose=_PURPOSE):
        return None
    head = _read_varint(payload)
    if head is None:
        return None
    campaign_id, used = head
    try:
        address = payload[used:].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "@" not in address:
        return None
    return Unsubscribe(campaign_id, address)


def mailto_token(address: str, domain: str) -> str | None:
    """``unsubscribe+TOKEN@domain`` -> TOKEN (not yet checked); None for any other address.
    The prefix and the domain ignore case; the token does not (it is base64)."""
    local, _, at_domain = address.strip().strip("<>").rpartition("@")
    prefix, plus, token = local.partition("+")
    if not plus or prefix.lower() != MAILTO_PREFIX or at_domain.lower() != domain.lower():
        return None
    return token if _TOKEN.fullmatch(token) else None


def check_base_url(text: str) -> str:
    """``base_url`` without its trailing slash; ValueError saying what is wrong."""
    if not text or not text.isascii() or not _URL_SAFE.fullmatch(text):
        raise ValueError("expected an http(s) URL without spaces, quotes, <, > or commas")
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http"):
        raise ValueError("expected an https:// (or http://) URL")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError("no query, fragment or user name: the agent appends /unsubscribe/TOKEN")
    try:
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise ValueError("the URL's port is not a number from 0 to 65535") from None
    return text.rstrip("/")


@dataclass(frozen=True)
class UnsubscribeSettings:
    """``[unsubscribe]``: where the one-click endpoint is reachable from the internet, the
    secret that signs the tokens, and the domain of the mailto addresses (None: none).

    Picklable, so the render pool's workers get it with the campaign's spec; the secret is
    kept out of ``repr`` (and so out of logs and tracebacks)."""

    base_url: str
    secret: bytes = field(repr=False)
    mailto_domain: str | None = None

    def __post_init__(self) -> None:
        if len(self.secret) < 16:
            raise ValueError("the unsubscribe secret needs at least 16 bytes")

    def url(self, token: str) -> str:
        return f"{self.base_url}/unsubscribe/{token}"

    def uris(self, campaign_id: int, address: str) -> tuple[str, ...]:
        """The List-Unsubscribe URIs of one message, HTTPS first."""
        token = make_token(self.secret, campaign_id, address)
        uris = [self.url(token)]
        local = f"{MAILTO_PREFIX}+{token}"
        if self.mailto_domain and len(local) <= MAX_LOCAL_PART:
            uris.append(f"mailto:{local}@{self.mailto_domain}")
        return tuple(uris)

    def read(self, token: str, *, via: str = "https") -> Unsubscribe | None:
        found = read_token(self.secret, token)
        return None if found is None else Unsubscribe(found.campaign_id, found.address, via)

"""Recipient address validation and normalization (domain lowercased, IDNA to A-labels)."""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

import idna

__all__ = ["Address", "InvalidAddress", "parse_address"]

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_LOCAL_ASCII = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f<>()\[\]\\,;:\"@]")


class InvalidAddress(ValueError):
    """Not an address we can send to; the message says why."""


@dataclass(frozen=True, slots=True)
class Address:
    """A deliverable address: ``address`` for the envelope, ``key`` for de-duplication."""

    address: str
    key: str
    smtputf8: bool

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


@functools.lru_cache(maxsize=4096)  # lists repeat a few domains: gmail.com...
def _normalize_domain(domain: str) -> str:
    domain = domain.rstrip(".").lower()
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise InvalidAddress(f"invalid international domain: {exc}") from None
    if len(domain) > 253:
        raise InvalidAddress("domain longer than 253 characters")
    labels = domain.split(".")
    if len(labels) < 2:
        raise InvalidAddress(f"domain {domain!r} has no dot")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise InvalidAddress(f"invalid domain {domain!r}")
    if labels[-1].isdigit():
        raise InvalidAddress(f"domain {domain!r} looks like an IP address")
    return domain


def parse_address(text: str) -> Address:
    """Validate one address; raise InvalidAddress with a reason an operator understands."""
    value = text.strip()
    if not value:
        raise InvalidAddress("empty address")
    if value.count("@") != 1:
        raise InvalidAddress(f"{value[:80]!r} must contain exactly one @")
    local, _, domain = value.partition("@")
    if not local:
        raise InvalidAddress(f"{value[:80]!r} has an empty local part")
    if len(local.encode("utf-8")) > 64:
        raise InvalidAddress(f"{value[:80]!r}: local part longer than 64 octets")
    if _FORBIDDEN.search(local):
        raise InvalidAddress(f"{value[:80]!r}: forbidden character in local part")
    smtputf8 = not local.isascii()
    if not smtputf8 and not _LOCAL_ASCII.fullmatch(local):
        raise InvalidAddress(f"{value[:80]!r}: invalid local part (dots?)")
    if smtputf8 and (local.startswith(".") or local.endswith(".") or ".." in local):
        raise InvalidAddress(f"{value[:80]!r}: invalid local part (dots?)")
    if smtputf8 and any(unicodedata.category(c)[0] in "CZ" for c in local):
        # controls, format characters (bidi, zero-width), separators (U+2028, NBSP...)
        raise InvalidAddress(f"{value[:80]!r}: invisible or control character in local part")
    if _FORBIDDEN.search(domain):
        raise InvalidAddress(f"{value[:80]!r}: forbidden character in domain")
    normalized = f"{local}@{_normalize_domain(domain)}"
    if len(normalized.encode("utf-8")) > 254:
        raise InvalidAddress(f"{value[:80]!r}: address longer than 254 octets")
    key = unicodedata.normalize("NFC", normalized.lower()) if smtputf8 else normalized.lower()
    return Address(normalized, key, smtputf8)
